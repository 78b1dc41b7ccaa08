#!/usr/bin/env bash
# Command-line behaviour of the factory-init binary given as $1 (--help, --plan, exit codes).
set -u
bin=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok - $1"; }
bad() { fail=$((fail + 1)); echo "not ok - $1"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }

"$bin" --help >"$tmp/help" 2>&1
check "--help exits 0" test $? -eq 0
check "--help names --plan and --root" grep -q -- '--root=DIR' "$tmp/help"
check "--help names the vm.* keys" grep -q 'vm.persist.timeout' "$tmp/help"
"$bin" --version >"$tmp/version"
check "--version" grep -qx 'factory-init [0-9.]*' "$tmp/version"
"$bin" --bogus >/dev/null 2>&1
check "unknown option exits 2" test $? -eq 2
"$bin" --plan --root=/x >/dev/null 2>&1
check "--plan with --root exits 2" test $? -eq 2

"$bin" --plan --config /nonexistent \
	--cmdline 'root=LABEL=factory vm.hostname=bad_host! vm.luks.key=SECRET-9f2c vm.note="a b"' \
	>"$tmp/plan" 2>"$tmp/err"
check "--plan exits 0 on malformed values" test $? -eq 0
check "--plan prints JSON" python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$tmp/plan"
check "--plan names the malformed key" grep -q 'warning: vm.hostname="bad_host!"' "$tmp/err"
check "--plan never prints the key" bash -c "! grep -q SECRET-9f2c '$tmp/plan' '$tmp/err'"
check "--plan shows the quoted value" python3 -c '
import json, sys
p = json.load(open(sys.argv[1]))
assert p["config"] == {"note": "a b"}, p["config"]
assert p["root"]["device"] == "LABEL=factory"
assert p["key_on_cmdline"] is True' "$tmp/plan"

printf '{"repo": "https://g/r.git", "store": "off"}' >"$tmp/cfg.json"
"$bin" --plan --config "$tmp/cfg.json" --cmdline 'vm.branch=main' >"$tmp/plan2" 2>&1
check "--plan merges the embedded config" python3 -c '
import json, sys
p = json.load(open(sys.argv[1]))
assert p["config"] == {"repo": "https://g/r.git", "branch": "main"}, p["config"]
assert p["store"] == "off"' "$tmp/plan2"

# enroll-tpm2: argument errors are caught before any TPM or disk is touched.
"$bin" enroll-tpm2 --help >"$tmp/ehelp" 2>&1
check "enroll-tpm2 --help exits 0" test $? -eq 0
check "enroll-tpm2 --help names --pcrs" grep -q -- '--pcrs=LIST' "$tmp/ehelp"
"$bin" enroll-tpm2 >/dev/null 2>&1
check "enroll-tpm2 without a device exits 2" test $? -eq 2
"$bin" enroll-tpm2 --pcrs=7:sha1=00 "$tmp/none" >"$tmp/eout" 2>&1
check "enroll-tpm2 refuses a sha1 value (exit 2)" test $? -eq 2
check "enroll-tpm2 says why" grep -q 'sha256' "$tmp/eout"
truncate -s 1M "$tmp/plain.img"
"$bin" enroll-tpm2 --pcrs= --unlock-key-file=/dev/null "$tmp/plain.img" >"$tmp/eout2" 2>&1
check "enroll-tpm2 on a non-LUKS image exits 1" test $? -eq 1
check "enroll-tpm2 warns about an empty PCR list" grep -q 'WARNING: enrolling with no PCRs' "$tmp/eout2"

# status: the human view, the exit code by outcome, and what is not a record.
printf '{"outcome":"fallback","mode":"helper","reason":"no data disk","store":"off","steps":[]}' \
    >"$tmp/st-fallback.json"
"$bin" status "$tmp/st-fallback.json" >"$tmp/sout" 2>&1
check "status of a fallback exits 1" test $? -eq 1
check "status says the outcome first" sh -c 'head -1 "$1" | grep -q "^outcome *fallback"' _ "$tmp/sout"
check "status gives the reason" grep -q '^reason *no data disk$' "$tmp/sout"
printf '{"outcome":"persist","device":"/dev/vdb","fstype":"btrfs","store":"bind"}' \
    >"$tmp/st-persist.json"
"$bin" status --json "$tmp/st-persist.json" >"$tmp/sout2" 2>&1
check "status --json of persist exits 0" test $? -eq 0
check "status --json prints the record" python3 -c '
import json, sys
assert json.load(open(sys.argv[1]))["store"] == "bind"' "$tmp/sout2"
"$bin" status "$tmp/none.json" >/dev/null 2>&1
check "status without a record exits 3" test $? -eq 3
ln -s "$tmp/st-persist.json" "$tmp/st-link.json"
"$bin" status "$tmp/st-link.json" >/dev/null 2>&1
check "status does not follow a symlink (exit 3)" test $? -eq 3
mkfifo "$tmp/st-fifo.json"
timeout 10 "$bin" status "$tmp/st-fifo.json" >/dev/null 2>&1
check "status refuses a FIFO without blocking (exit 3)" test $? -eq 3
printf 'not json' >"$tmp/st-bad.json"
"$bin" status "$tmp/st-bad.json" >/dev/null 2>&1
check "status of garbage exits 3" test $? -eq 3
"$bin" status --bogus >/dev/null 2>&1
check "status with a bad option exits 2" test $? -eq 2

# age-keygen: a new identity; Debian's age reads it both ways
"$bin" age-keygen -o "$tmp/host.agekey" 2>"$tmp/age.err"
check "age-keygen -o exits 0" test $? -eq 0
check "age-keygen -o makes the file 0600" test "$(stat -c %a "$tmp/host.agekey")" = 600
check "age-keygen writes age-keygen's three lines" python3 -c '
import re, sys
l = open(sys.argv[1]).read().splitlines()
assert len(l) == 3 and re.fullmatch(r"# created: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", l[0]), l
assert re.fullmatch(r"# public key: age1[02-9ac-hj-np-z]{58}", l[1]), l
assert re.fullmatch(r"AGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58}", l[2]), l' "$tmp/host.agekey"
rcpt=$(sed -n 's/^# public key: //p' "$tmp/host.agekey")
check "age-keygen -o prints the recipient on stderr" grep -qx "Public key: $rcpt" "$tmp/age.err"
check "age-keygen -y gives the recipient it wrote" test "$("$bin" age-keygen -y "$tmp/host.agekey")" = "$rcpt"
"$bin" age-keygen -o "$tmp/host.agekey" 2>/dev/null
check "age-keygen -o refuses an existing file" test $? -eq 1
ln -s "$tmp/elsewhere" "$tmp/link.agekey"
"$bin" age-keygen -o "$tmp/link.agekey" 2>/dev/null
rc=$?
check "age-keygen -o does not follow a link" test "$rc" -eq 1 -a ! -e "$tmp/elsewhere"
printf 'AGE-SECRET-KEY-1QQQ\n' >"$tmp/bad.agekey"
"$bin" age-keygen -y "$tmp/bad.agekey" >/dev/null 2>&1
check "age-keygen -y refuses a malformed identity" test $? -eq 1
"$bin" age-keygen -x >/dev/null 2>&1
check "age-keygen with a bad option exits 2" test $? -eq 2
if command -v age-keygen >/dev/null && command -v age >/dev/null; then
	check "Debian's age-keygen -y agrees on our identity" test "$(age-keygen -y "$tmp/host.agekey")" = "$rcpt"
	age-keygen -o "$tmp/theirs.agekey" 2>/dev/null
	check "our -y agrees on Debian's identity" test "$("$bin" age-keygen -y "$tmp/theirs.agekey")" = "$(age-keygen -y "$tmp/theirs.agekey")"
	check "Debian's age encrypts to our recipient, decrypts with our identity" \
		test "$(echo fleet-secret | age -r "$rcpt" | age -d -i "$tmp/host.agekey")" = fleet-secret
else
	bad "Debian's age and age-keygen are missing (apt-get install age)"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
