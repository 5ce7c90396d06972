<?php
// create the orders table (stand-in migration)
