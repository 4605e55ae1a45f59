#!/bin/sh
# Adds up the "N passed, N failed" lines of every test pass in a log and prints the total.
awk '/^[0-9]+ passed, [0-9]+ failed$/ { p += $1; f += $3; n++ }
     END { if (n == 0) { print "0 passed, 1 failed"; exit 1 }
           printf "all passes: %d\n%d passed, %d failed\n", n, p, f }' "$1"
