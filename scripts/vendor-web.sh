#!/usr/bin/env bash
# Vendor the web UI's JavaScript from the npm registry into the package
# (costor/server/static/vendor/): htmx and its server-sent-events extension, each with
# its licence. No build step and no CDN: the files are served by `costor serve` itself.
# Run again to change a version (then commit what it writes); the versions are pinned
# here and written to vendor/VERSIONS.
set -euo pipefail
cd "$(dirname "$0")/.."
HTMX=2.0.11     # htmx 2: the major version its SSE extension is made for
HTMX_SSE=2.2.4  # htmx-ext-sse
out=costor/server/static/vendor
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "htmx.org@$HTMX" "htmx-ext-sse@$HTMX_SSE" >/dev/null)
mkdir -p "$work/htmx" "$work/sse"
tar -xzf "$work/htmx.org-$HTMX.tgz" -C "$work/htmx"
tar -xzf "$work/htmx-ext-sse-$HTMX_SSE.tgz" -C "$work/sse"
mkdir -p "$out"
cp "$work/htmx/package/dist/htmx.min.js" "$out/htmx.min.js"
cp "$work/htmx/package/LICENSE" "$out/htmx.LICENSE"
cp "$work/sse/package/dist/sse.min.js" "$out/htmx-ext-sse.min.js" 2>/dev/null ||
    cp "$work/sse/package/sse.js" "$out/htmx-ext-sse.min.js"
licence="$(ls "$work/sse/package" | grep -i -m1 '^licen[cs]e' || true)"
if [ -n "$licence" ]; then
    cp "$work/sse/package/$licence" "$out/htmx-ext-sse.LICENSE"
else
    cp "$out/htmx.LICENSE" "$out/htmx-ext-sse.LICENSE"  # same project, same BSD-0 licence
fi
printf 'htmx.org %s\nhtmx-ext-sse %s\n' "$HTMX" "$HTMX_SSE" >"$out/VERSIONS"
echo "vendored into $out:"; ls -l "$out"
