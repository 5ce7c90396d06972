<?php
// create the jobs table (stand-in migration)
