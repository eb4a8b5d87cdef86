#!/usr/bin/env bash
# Build the Windows native core's C test driver with mingw-w64 and run it
# under wine, once per C runtime:
#   msvcrt  mingw-w64's default (the system msvcrt.dll)
#   ucrt    the Universal CRT, which MSVC and therefore CPython's own builds
#           use; it is where _get_osfhandle() of a closed descriptor invokes
#           the invalid parameter handler that core_windows.c suppresses
# Each run prints its checks; the last line is the total, alone on its line:
# "N passed, M failed".  Exits non-zero when a check failed or a build broke.
#
# Installs nothing.  On Debian 12 the tools come from
#     apt-get update && apt-get install -y gcc-mingw-w64-x86-64 wine64
# (wine64 pulls in the `wine` launcher and wineserver).
#
# Environment:
#   OUT=dir       where the .exe files go (default: a temporary directory)
#   WINEPREFIX    reused when set (warm start, ~0.5 s); otherwise a private
#                 prefix in a temporary directory, created on the first
#                 start (a few seconds) and removed afterwards
#   CC            the cross compiler (default x86_64-w64-mingw32-gcc)
#   NOINHERIT_WINE_CRTS  the runtimes to test (default "msvcrt ucrt")
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
native="$(dirname "$here")"
cc="${CC:-x86_64-w64-mingw32-gcc}"
crts="${NOINHERIT_WINE_CRTS:-msvcrt ucrt}"

if ! command -v "$cc" >/dev/null 2>&1; then
    echo "build.sh: $cc not found (apt-get install -y gcc-mingw-w64-x86-64)" >&2
    exit 2
fi
wine_cmd=""
for candidate in wine64 wine /usr/lib/wine/wine64; do
    if command -v "$candidate" >/dev/null 2>&1; then
        wine_cmd="$(command -v "$candidate")"
        break
    fi
done
if [ -z "$wine_cmd" ]; then
    echo "build.sh: wine not found (apt-get install -y wine64)" >&2
    exit 2
fi
wineserver_cmd="$(command -v wineserver || echo /usr/lib/wine/wineserver)"

scratch="$(mktemp -d "${TMPDIR:-/tmp}/noinherit-wine.XXXXXX")"
own_prefix=""
cleanup() {
    # Stop this prefix's wineserver before deleting the prefix under it.
    if [ -n "$own_prefix" ]; then
        WINEPREFIX="$own_prefix" "$wineserver_cmd" -k >/dev/null 2>&1 || true
    fi
    rm -rf "$scratch"
}
trap cleanup EXIT

out="${OUT:-$scratch/out}"
if [ -z "${WINEPREFIX:-}" ]; then
    own_prefix="$scratch/prefix"
    export WINEPREFIX="$own_prefix"
fi
export WINEDEBUG=-all
# No Gecko/Mono installer and no desktop menu entries on the first start.
export WINEDLLOVERRIDES="${WINEDLLOVERRIDES:-mscoree,mshtml,winemenubuilder.exe=}"
unset DISPLAY

# -std=c11, warnings as errors: the same sources must also build with MSVC,
# so nothing GNU-only may creep in unnoticed.
cflags=(-O2 -std=c11 -Wall -Wextra -Wshadow -Werror -I"$native")

total_passed=0
total_failed=0
status=0
for crt in $crts; do
    dir="$out/$crt"
    mkdir -p "$dir"
    extra=()
    case "$crt" in
    msvcrt)
        # Also start the handle-table queries with a 64-byte buffer, so the
        # STATUS_INFO_LENGTH_MISMATCH growth path runs (the default first
        # size is enough for wine's whole table).
        extra=(-DNIC_QUERY_FIRST_SIZE=64)
        ;;
    ucrt)
        # gcc 12 has no -mcrtdll=ucrt: link libucrt instead of libmsvcrt
        # through a specs file, and tell the headers (mingw-w64's own
        # UCRT toolchains do both).
        "$cc" -dumpspecs | sed 's/-lmsvcrt/-lucrt/g' >"$scratch/ucrt.specs"
        extra=(-specs="$scratch/ucrt.specs" -D_UCRT)
        ;;
    *)
        echo "build.sh: unknown C runtime '$crt'" >&2
        exit 2
        ;;
    esac
    "$cc" ${extra[@]+"${extra[@]}"} "${cflags[@]}" "$native/core_windows.c" "$here/test_core_windows.c" \
        -o "$dir/test_core_windows.exe" -lws2_32
    "$cc" ${extra[@]+"${extra[@]}"} "${cflags[@]}" "$here/child.c" -o "$dir/child.exe"

    echo "== $crt =="
    log="$scratch/$crt.log"
    rc=0
    "$wine_cmd" "$dir/test_core_windows.exe" </dev/null >"$log" 2>&1 || rc=$?
    cat "$log"
    last="$(tail -n 1 "$log" | tr -d '\r')"
    if [[ "$last" =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
        total_passed=$((total_passed + BASH_REMATCH[1]))
        total_failed=$((total_failed + BASH_REMATCH[2]))
    else
        echo "FAIL - the $crt driver ended without its summary line (exit $rc)"
        total_failed=$((total_failed + 1))
    fi
    if [ "$rc" -ne 0 ]; then
        status=1
    fi
done

echo "$total_passed passed, $total_failed failed"
if [ "$total_failed" -ne 0 ]; then
    status=1
fi
exit "$status"
