#!/bin/sh
# GET / : one line, e.g. "shop 1 APP_ENV=production host=3f2a1b0c".
# ?sleep=N (0-60) holds the answer N seconds (for drain tests).
case "$QUERY_STRING" in
sleep=[0-9] | sleep=[0-5][0-9] | sleep=60) sleep "${QUERY_STRING#sleep=}" ;;
esac
printf 'Content-Type: text/plain\r\n\r\n'
printf 'shop %s APP_ENV=%s host=%s\n' "$(cat /app/VERSION)" "${APP_ENV:-unset}" "$(hostname)"
