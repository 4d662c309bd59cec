#!/bin/sh
# Render an upsr HTML report in headless Chromium (Debian package 'chromium') and save a
# screenshot: proof that a real browser shows the page offline from a file:// URL.
#
#   scripts/report_screenshot.sh REPORT.html OUT.png [WIDTH] [HEIGHT]
#
# Network access is switched off for the browser (--proxy-server to a closed port and no
# DNS), so anything the page tried to fetch from the network would be missing in the shot.
set -eu
if [ $# -lt 2 ]; then
    echo "usage: $0 REPORT.html OUT.png [WIDTH] [HEIGHT]" >&2
    exit 2
fi
page=$(realpath "$1")
out=$(realpath -m "$2")
width=${3:-1400}
height=${4:-2400}
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    echo "$0: chromium not found (Debian: apt-get install chromium)" >&2
    exit 1
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# lazy images load only near the viewport: a tall window shows the first files' pictures
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --mute-audio \
    --user-data-dir="$profile" --proxy-server=127.0.0.1:9 --host-resolver-rules="MAP * ~NOTFOUND" \
    --virtual-time-budget=15000 --window-size="$width,$height" \
    --screenshot="$out" "file://$page" 2>"$profile/log" || {
    cat "$profile/log" >&2
    exit 1
}
echo "$out"
