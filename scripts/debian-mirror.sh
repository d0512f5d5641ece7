#!/bin/sh
# Prints the host's configured Debian mirror and its security mirror ("MIRROR SECURITY"; SECURITY may be
# empty), from the deb822 sources (Debian 12's cloud images: /etc/apt/sources.list.d/debian.sources) or
# the one-line sources.list (Debian 12's installer). Read only: the host's apt configuration is not changed.
# Env: MULTINIC_APT_SOURCES (one file to read instead).
set -eu
files=${MULTINIC_APT_SOURCES:-/etc/apt/sources.list.d/debian.sources /etc/apt/sources.list}
for file in $files; do
    [ -r "$file" ] || continue
    found=$(awk '
        /^[ \t]*#/ { next }
        /^URIs:/ { uri = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i ~ /-security$/) sec = uri; else if (!main) main = uri }
        /^deb[ \t]/ {
            n = 2; if ($2 ~ /^\[/) { while (n <= NF && $n !~ /\]$/) n++; n++ }
            if ($(n + 1) ~ /-security$/) { if (!sec) sec = $n } else if (!main) main = $n
        }
        END { if (main) print main, sec }' "$file")
    if [ -n "$found" ]; then
        echo "$found"
        exit 0
    fi
done
echo "debian-mirror: no Debian mirror in $files" >&2
exit 1
