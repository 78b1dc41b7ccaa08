#!/bin/bash
# symbol-clash.sh LDFLAGS-FILE OBJECT... — fails when one of our objects defines a global symbol
# that an archive of the static link also defines.
#
# Why: in a static link, a symbol our objects define wins over an archive member's silently when
# that member is not pulled in for another symbol. tpm2-tss's libtss2-tcti-device.a defines
# write_all() (returning the byte count); ours of the same name (returning 0) once replaced it
# inside the device TCTI, so every TPM2 open failed in the guest while every unit test passed.
# The linker cannot tell; this check can, for every archive the link names (and libc).
set -euo pipefail
ldflags_file=$1
shift
read -r -a flags < "$ldflags_file"
dirs=()
libs=(c)
for f in "${flags[@]}"; do
	case $f in
	-L*) dirs+=("${f#-L}") ;;
	-l*) libs+=("${f#-l}") ;;
	esac
done
multiarch=$(gcc -print-multiarch 2>/dev/null || true)
dirs+=("/usr/lib/$multiarch" /usr/lib /lib/"$multiarch")

ours=$(nm -g --defined-only "$@" | awk 'NF == 3 && $2 ~ /^[A-Z]$/ { print $3 }' | sort -u)
clashes=0
for l in "${libs[@]}"; do
	archive=
	for d in "${dirs[@]}"; do
		if [ -e "$d/lib$l.a" ]; then
			archive=$d/lib$l.a
			break
		fi
	done
	[ -n "$archive" ] || continue # a library linked only from a shared object's point of view
	members=("$archive")
	if [ "$(head -c 7 "$archive")" != '!<arch>' ]; then
		# a linker script (glibc's libm.a: GROUP ( libm-2.36.a libmvec.a )): its archives
		read -r -a members <<< "$(grep -o '[^ ()]*\.a' "$archive" | tr '\n' ' ')"
	fi
	theirs=$(nm -g --defined-only "${members[@]}" 2>/dev/null |
		awk 'NF == 3 && $2 ~ /^[A-Z]$/ { print $3 }' | sort -u)
	both=$(comm -12 <(echo "$ours") <(echo "$theirs"))
	if [ -n "$both" ]; then
		for s in $both; do
			echo "symbol-clash: $s is defined by our objects and by $archive" >&2
		done
		clashes=1
	fi
done
if [ "$clashes" = 1 ]; then
	echo "symbol-clash: rename ours (a static link would silently use one for the other)" >&2
	exit 1
fi
