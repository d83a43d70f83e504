#!/usr/bin/env bash
# Windows checks of the user-mode shim that run on Linux (issue 3, item 6). Run from the
# repository root, normally through `cargo make qm-windows-shim` (part of `cargo make test`).
#
#  1. cargo check of qosmark-shim (library + qosmarkctl) and qosmark-capi (the C ABI DLL) for
#     x86_64-pc-windows-msvc;
#  2. cross build for x86_64-pc-windows-gnu with Debian's mingw-w64: qosmark.dll, its import
#     library libqosmark.dll.a, qosmarkctl.exe;
#  3. include/qosmark.h against mingw-w64's qos2.h (the independent oracle): every enumerator,
#     enum size, structure size and field offset, compared at compile time (qos2_values.c,
#     qos2_assert.c); the eleven prototypes (gcc -aux-info, qos2_signatures.c); and
#     qosmark.dll exports every function qos2.h declares; qosmark.h's own GQoS definitions
#     (non-Windows, host gcc) against mingw-w64's qos.h / qossp.h / traffic.h / winsock2.h
#     (gqos_values.c, gqos_facts.h: every constant, size and offset), and the 4 GQoS exports;
#  4. a C program (create_handle.c) built with x86_64-w64-mingw32-gcc against qosmark.h and
#     libqosmark.dll.a;
#  5. under Wine (64-bit, no qosmark driver): `qosmarkctl.exe status` exits 3 with the
#     "driver not installed or not started" message (also as --json), and the C program's
#     QOSCreateHandle / QOSCloseHandle error-path checks pass;
#  6. under Wine, inprocess.c against a test-hooks qosmark.dll (in-process engine): the QOS2
#     calls with real Winsock sockets (socket facts, DestAddr rules, dual stack, last error
#     kept on success); gqos_inprocess.c: the GQoS calls with the system's QOS / QOS_DESTADDR
#     / RSVP_STATUS_INFO types. The shipped qosmark.dll must not export the test hook;
#  7. qosmark-shim's unit tests built for x86_64-pc-windows-gnu, run under Wine.
#
# Needs: rustup targets x86_64-pc-windows-msvc and x86_64-pc-windows-gnu; apt packages
# mingw-w64 (gcc-mingw-w64-x86-64), wine, wine64, python3. The Wine prefix lives in
# target/wine-prefix (WINEDEBUG=-all); its first start (wineboot) is timed and printed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$root"
here=usermode-shim/tests/windows
include=usermode-shim/include
gnu=target/x86_64-pc-windows-gnu/debug
out=target/windows-check
export WINEPREFIX="$root/target/wine-prefix"
export WINEDEBUG=-all
# Wine must not try to open windows (no display in CI).
unset DISPLAY WAYLAND_DISPLAY

start=$SECONDS
step_start=$SECONDS
step_name=""
step() {
  [ -n "$step_name" ] && echo "-- $step_name: $((SECONDS - step_start))s"
  step_name="$1"
  step_start=$SECONDS
  echo "== windows-shim: $1"
}
fail() {
  echo "windows-shim: FAILED: $*" >&2
  exit 1
}

# qosmark-shim: the library and qosmarkctl; qosmark-capi: the C ABI's qosmark.dll.
pkgs=(-p qosmark-shim -p qosmark-capi)

step "cargo check --target x86_64-pc-windows-msvc"
cargo check "${pkgs[@]}" --target x86_64-pc-windows-msvc --lib --bins

step "cross build --target x86_64-pc-windows-gnu (mingw-w64)"
# First the test variant of qosmark.dll (cargo feature test-hooks: in-process engine) for the
# Winsock checks under Wine, kept apart; then the shipped one, which stays in $gnu.
cargo build -p qosmark-capi --features test-hooks --target x86_64-pc-windows-gnu --lib
rm -rf "$out"
mkdir -p "$out/hooks"
cp "$gnu/qosmark.dll" "$gnu/libqosmark.dll.a" "$out/hooks/"
cargo build "${pkgs[@]}" --target x86_64-pc-windows-gnu --lib --bins
for f in qosmark.dll libqosmark.dll.a qosmarkctl.exe; do
  [ -f "$gnu/$f" ] || fail "$gnu/$f was not built"
done
cp "$gnu/qosmark.dll" "$gnu/qosmarkctl.exe" "$out/"
# The shipped library has no test hook.
x86_64-w64-mingw32-objdump -p "$out/qosmark.dll" >"$out/qosmark.objdump"
if grep -q QmTestUseInProcessEngine "$out/qosmark.objdump"; then
  fail "the shipped qosmark.dll exports the test hook"
fi
cc=(x86_64-w64-mingw32-gcc -std=c11 -O1 -Wall -Wextra -Werror)
# Wine 8 lacks bcryptprimitives.dll, which Rust's std imports: see bcryptprimitives.c.
"${cc[@]}" -shared -o "$out/bcryptprimitives.dll" "$here/bcryptprimitives.c" -ladvapi32
cp "$out/bcryptprimitives.dll" "$out/hooks/"

step "qosmark.h against mingw-w64 qos2.h"
facts() { # facts <extra flags...>: "expression = value" lines of qos2_facts.h
  "${cc[@]}" -S -o - -I"$here" -I"$include" "$@" "$here/qos2_values.c" |
    sed -n 's/^[[:space:]]*#QMFACT \(.*\)$/\1/p'
}
facts -DQM_ORACLE >"$out/oracle.txt"
facts >"$out/ours.txt"
n_facts="$(grep -c '^QM_FACT(' "$here/qos2_facts.h")"
[ "$(wc -l <"$out/oracle.txt")" -eq "$n_facts" ] || fail "oracle gave $(wc -l <"$out/oracle.txt") of $n_facts facts"
# The compile-time comparison: the oracle's values as _Static_asserts against qosmark.h.
sed 's/^\(.*\) = \(-\{0,1\}[0-9]*\)$/_Static_assert((\1) == \2, "\1 must be \2 as in mingw-w64 qos2.h");/' \
  "$out/oracle.txt" >"$out/qos2_expected.h"
"${cc[@]}" -c -o "$out/qos2_assert.o" -I"$out" -I"$include" "$here/qos2_assert.c"
# The comparison must be able to fail: one fact off by one has to be a compile error.
mkdir -p "$out/broken"
sed '1s/== \([0-9]*\)/== \1 + 1/' "$out/qos2_expected.h" >"$out/broken/qos2_expected.h"
if "${cc[@]}" -c -o /dev/null -I"$out/broken" -I"$include" "$here/qos2_assert.c" 2>/dev/null; then
  fail "a wrong expected value compiled: the header comparison cannot fail"
fi
diff -u "$out/oracle.txt" "$out/ours.txt" || fail "qosmark.h differs from qos2.h (above)"
echo "$n_facts facts equal"
# The prototypes: name, parameter order and parameter types as written in each header.
prototypes() { # prototypes <output> <extra flags...>
  local o="$1"
  shift
  "${cc[@]}" -fsyntax-only -aux-info "$o.aux" -I"$include" "$@" "$here/qos2_signatures.c"
  grep -o 'extern [A-Z]*BOOL QOS[A-Za-z]* (.*)' "$o.aux" | sed 's/^extern WINBOOL /extern BOOL /' |
    sort >"$o"
}
prototypes "$out/oracle-prototypes.txt" -DQM_ORACLE
prototypes "$out/our-prototypes.txt"
[ "$(wc -l <"$out/oracle-prototypes.txt")" -eq 11 ] || fail "expected 11 prototypes in qos2.h"
diff -u "$out/oracle-prototypes.txt" "$out/our-prototypes.txt" ||
  fail "qosmark.h prototypes differ from qos2.h (above)"
# The comparison must be able to fail: two parameters swapped are a difference.
sed 's/(HANDLE, QOS_FLOWID, QOS_SET_FLOW, ULONG,/(HANDLE, QOS_SET_FLOW, QOS_FLOWID, ULONG,/' \
  "$out/our-prototypes.txt" >"$out/broken/prototypes.txt"
if diff -q "$out/oracle-prototypes.txt" "$out/broken/prototypes.txt" >/dev/null; then
  fail "swapped parameters compared equal: the prototype comparison cannot fail"
fi
echo "11 prototypes equal"
# Every function mingw's qos2.h declares is exported by qosmark.dll.
qos2_h="$(echo '#include <qos2.h>' | x86_64-w64-mingw32-gcc -E -M -x c - | tr ' \\' '\n\n' | grep '/qos2\.h$' | sed -n 1p)"
[ -n "$qos2_h" ] || fail "mingw-w64 qos2.h not found"
sed -n 's/^WINBOOL WINAPI \(QOS[A-Za-z]*\)(.*/\1/p' "$qos2_h" | sort >"$out/qos2-functions.txt"
[ "$(wc -l <"$out/qos2-functions.txt")" -eq 11 ] || fail "expected 11 functions in $qos2_h"
x86_64-w64-mingw32-objdump -p "$gnu/qosmark.dll" |
  sed -n '/\[Ordinal\/Name Pointer\] Table/,/^$/p' | sed -n 's/^[[:space:]]*\[ *[0-9]*\] //p' |
  sort >"$out/exports.txt"
missing="$(comm -23 "$out/qos2-functions.txt" "$out/exports.txt")"
[ -z "$missing" ] || fail "qosmark.dll does not export: $missing"
echo "qosmark.dll exports all 11 QOS2 functions"

step "qosmark.h GQoS definitions against mingw-w64 qos.h / qossp.h / traffic.h / winsock2.h"
# The oracle: mingw-w64's headers (x86_64-w64-mingw32). Ours: qosmark.h's own definitions for
# systems other than Windows, compiled by the host's x86_64 gcc (the header Linux programs
# include). Same values, sizes and offsets expected.
gqos_facts() { # gqos_facts <compiler...>: "expression = value" lines of gqos_facts.h
  "$@" -std=c11 -O1 -Wall -Wextra -Werror -S -o - -I"$here" -I"$include" "$here/gqos_values.c" |
    sed -n 's/^[[:space:]]*#QMFACT \(.*\)$/\1/p'
}
gqos_facts x86_64-w64-mingw32-gcc -DQM_ORACLE >"$out/gqos-oracle.txt"
gqos_facts gcc >"$out/gqos-ours.txt"
n_gqos="$(grep -c '^QM_FACT(' "$here/gqos_facts.h")"
[ "$(wc -l <"$out/gqos-oracle.txt")" -eq "$n_gqos" ] ||
  fail "oracle gave $(wc -l <"$out/gqos-oracle.txt") of $n_gqos GQoS facts"
[ "$(wc -l <"$out/gqos-ours.txt")" -eq "$n_gqos" ] ||
  fail "qosmark.h gave $(wc -l <"$out/gqos-ours.txt") of $n_gqos GQoS facts"
diff -u "$out/gqos-oracle.txt" "$out/gqos-ours.txt" || fail "qosmark.h GQoS definitions differ (above)"
sed '1s/= \([0-9-]*\)$/= 1\1/' "$out/gqos-ours.txt" >"$out/broken/gqos-ours.txt"
if diff -q "$out/gqos-oracle.txt" "$out/broken/gqos-ours.txt" >/dev/null; then
  fail "a changed GQoS value compared equal: the GQoS comparison cannot fail"
fi
echo "$n_gqos GQoS facts equal"
for f in QmSetSocketQos QmGetSocketQos QmWaitSocketQosChange QmGetSocketQosHandle; do
  grep -qx "$f" "$out/exports.txt" || fail "qosmark.dll does not export $f"
done
echo "qosmark.dll exports the 4 GQoS functions"

step "C program against qosmark.h + libqosmark.dll.a"
"${cc[@]}" -o "$out/create_handle.exe" -I"$include" "$here/create_handle.c" \
  "$gnu/libqosmark.dll.a" -lws2_32
# (Through a file: `objdump | grep -q` would fail under pipefail when grep stops early.)
x86_64-w64-mingw32-objdump -p "$out/create_handle.exe" >"$out/create_handle.objdump"
grep -q 'DLL Name: qosmark.dll' "$out/create_handle.objdump" ||
  fail "create_handle.exe does not import qosmark.dll"

step "Wine prefix"
if [ ! -f "$WINEPREFIX/system.reg" ]; then
  boot_start=$SECONDS
  wineboot --init >/dev/null 2>&1 || fail "wineboot failed"
  wineserver --wait
  echo "first start of Wine (wineboot): $((SECONDS - boot_start))s"
else
  echo "reusing $WINEPREFIX"
fi

step "qosmarkctl.exe status under Wine (no driver)"
set +e
wine "$out/qosmarkctl.exe" status >"$out/status.out" 2>"$out/status.err"
code=$?
set -e
cat "$out/status.err"
[ "$code" -eq 3 ] || fail "qosmarkctl.exe status exited $code, expected 3"
grep -q 'driver not installed or not started' "$out/status.err" ||
  fail "qosmarkctl.exe status did not say 'driver not installed or not started'"
set +e
wine "$out/qosmarkctl.exe" status --json >"$out/status.json" 2>/dev/null
code=$?
set -e
[ "$code" -eq 3 ] || fail "qosmarkctl.exe status --json exited $code, expected 3"
python3 - "$out/status.json" <<'PY' || fail "qosmarkctl.exe status --json: unexpected document"
import json, sys
doc = json.load(open(sys.argv[1]))
assert doc["reachable"] is False, doc
assert doc["error"]["exit"] == 3, doc
assert doc["error"]["win32"] == 1068, doc
assert "driver not installed or not started" in doc["error"]["message"], doc
PY
# A bad command line is refused before anything is opened: exit 2, on Windows too.
set +e
wine "$out/qosmarkctl.exe" rules add --name x --dscp 64 >/dev/null 2>"$out/usage.err"
code=$?
set -e
[ "$code" -eq 2 ] || fail "qosmarkctl.exe with a bad flag exited $code, expected 2"
grep -q -- '--dscp' "$out/usage.err" || fail "qosmarkctl.exe did not name the bad flag"
echo "ok: exit 3, driver-absent message, JSON; bad flag exit 2"

step "C program under Wine (no driver)"
wine "$out/create_handle.exe" || fail "create_handle.exe failed under Wine"

step "QOS2 with Winsock sockets under Wine (test-hooks qosmark.dll, in-process engine)"
"${cc[@]}" -o "$out/hooks/inprocess.exe" -I"$include" "$here/inprocess.c" \
  "$out/hooks/libqosmark.dll.a" -lws2_32
wine "$out/hooks/inprocess.exe" || fail "inprocess.exe failed under Wine"
"${cc[@]}" -o "$out/hooks/gqos_inprocess.exe" -I"$include" "$here/gqos_inprocess.c" \
  "$out/hooks/libqosmark.dll.a" -lws2_32
wine "$out/hooks/gqos_inprocess.exe" || fail "gqos_inprocess.exe failed under Wine"

step "qosmark-shim unit tests for x86_64-pc-windows-gnu under Wine"
# The library's own tests with the Windows code compiled in (transport helpers, socket facts).
tests_exe="$(cargo test -p qosmark-shim --target x86_64-pc-windows-gnu --lib --no-run \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])
')"
[ -n "$tests_exe" ] || fail "no Windows unit-test executable"
cp "$out/bcryptprimitives.dll" "$(dirname "$tests_exe")/"
wine "$tests_exe" || fail "qosmark-shim unit tests failed under Wine"

step "done"
echo "windows-shim: all checks passed in $((SECONDS - start))s"
