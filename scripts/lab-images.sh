build_standins() { log "images: not yet"; }
