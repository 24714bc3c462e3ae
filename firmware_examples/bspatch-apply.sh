#!/bin/sh
# Apply a whole-file BSDIFF40 delta on a device that has only the C bspatch and coreutils.
#
#   bspatch-apply.sh OLD PATCH NEW SHA256 [SIZE]
#
# SHA256 (and SIZE) come from the signed bundle manifest, verified by whoever
# calls this script. The result is written next to NEW, checked, fsynced and only
# then renamed onto NEW, so NEW is either absent or exactly the expected bytes.
# Exit codes: 0 applied, 2 usage, 3 bspatch failed, 4 size or sha256 mismatch.
set -eu

if [ "$#" -lt 4 ] || [ "$#" -gt 5 ]; then
    echo "usage: $0 OLD PATCH NEW SHA256 [SIZE]" >&2
    exit 2
fi
old=$1 patch=$2 new=$3 want_sha=$4 want_size=${5:-}
tmp="$new.part.$$"
trap 'rm -f "$tmp"' EXIT INT TERM

if ! bspatch "$old" "$tmp" "$patch"; then
    echo "bspatch-apply: bspatch failed for $patch" >&2
    exit 3
fi
if [ -n "$want_size" ]; then
    got_size=$(wc -c < "$tmp" | tr -d ' ')
    if [ "$got_size" != "$want_size" ]; then
        echo "bspatch-apply: result is $got_size bytes, manifest says $want_size" >&2
        exit 4
    fi
fi
got_sha=$(sha256sum "$tmp" | cut -d' ' -f1)
if [ "$got_sha" != "$want_sha" ]; then
    echo "bspatch-apply: result sha256 $got_sha, manifest says $want_sha" >&2
    exit 4
fi
sync "$tmp" 2>/dev/null || sync
mv -f "$tmp" "$new"
trap - EXIT INT TERM
echo "bspatch-apply: $new verified ($got_sha)"
