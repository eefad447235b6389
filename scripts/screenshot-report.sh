#!/bin/sh
# Renders a report's index.html in headless Chromium and saves a screenshot, to check by eye
# that the page renders (tables, figures, nothing overflowing). Not part of `make test`.
#
#     scripts/screenshot-report.sh [REPORT_DIR] [OUT_PNG] [WIDTH] [HEIGHT]
#
# Defaults: report/quickstart, /tmp/gauntlet-report.png, 1400 x 24000 (the whole quickstart
# page, about 16,500 pixels, with blank space below). Needs Chromium
# (Debian: apt-get install -y chromium). The page is opened from disk with networking,
# updates and sync off, in a throw-away profile.
set -eu

report_dir=${1:-report/quickstart}
out=${2:-/tmp/gauntlet-report.png}
width=${3:-1400}
height=${4:-24000}

page="$report_dir/index.html"
if [ ! -f "$page" ]; then
    echo "error: $page does not exist (run \`gauntlet report\` first)" >&2
    exit 2
fi
browser=""
for candidate in chromium chromium-browser google-chrome; do
    if command -v "$candidate" >/dev/null 2>&1; then
        browser=$candidate
        break
    fi
done
if [ -z "$browser" ]; then
    echo "error: no Chromium found (Debian: apt-get install -y chromium)" >&2
    exit 2
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
abs_page=$(cd "$(dirname "$page")" && pwd)/$(basename "$page")
case "$out" in
    /*) abs_out=$out ;;
    *) abs_out=$(pwd)/$out ;;
esac
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$profile" \
    --screenshot="$abs_out" --window-size="$width,$height" "file://$abs_page" 2>/dev/null
if [ ! -s "$abs_out" ]; then
    echo "error: $browser wrote no screenshot to $abs_out" >&2
    exit 1
fi
echo "$abs_out"
