#!/usr/bin/env bash
# run-in-vm.sh: run one command in a throwaway QEMU VM with a real IPVS kernel.
#
#   run-in-vm.sh [options] [--] COMMAND [ARG...]
#
#   -w DIR     share host DIR writable, at the same path inside (repeatable);
#              the only way to get files back out
#   -e K=V     set K in the command's environment (repeatable); -e K passes
#              this shell's value of K
#   -t SEC     wall-clock cap for the whole VM (default 900, env SVCPROXY_VM_TIMEOUT)
#   -m MIB     guest memory (default 2048, env SVCPROXY_VM_MEM)
#   -k         keep the control dir (console log, job script) and print its path
#   -q         no timing line on stderr
#
# The guest runs Debian's stock kernel (see build-image.sh) and chroots into
# this machine's own / (read-only 9p under a RAM overlay: the command can
# write anywhere, but only -w dirs reach the host; /run is a fresh tmpfs).
# COMMAND runs as root, in the current directory, with PATH extended by
# /usr/local/go/bin and SVCPROXY_IN_VM=1; SVCPROXY_* and a few Go variables
# of this shell pass through. Its stdout and stderr, merged, stream to this
# script's stdout. The VM has no NIC: its root netns has only lo.
#
# Exit status: COMMAND's. 124: the -t cap was hit. 125: the VM could not run
# the command or died without reporting a status (the console tail is
# printed to stderr then). 2: bad usage.
#
# As a `go test` runner (absolute path needed; profile and coverage dirs
# that go test names in the test flags are shared writable automatically):
#   go test -exec "$PWD/e2e/vm/run-in-vm.sh" ./ipvs/
#
# Debugging: -k keeps the console log; env SVCPROXY_VM_KERNEL_ARGS adds kernel
# command-line words (e.g. "loglevel=7" for a verbose console).
#
# Safety: TCG only, never KVM; no network device in the guest.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${SVCPROXY_VM_DIR:-/var/cache/svcproxy-vm}
timeout_s=${SVCPROXY_VM_TIMEOUT:-900}
mem=${SVCPROXY_VM_MEM:-2048}
keep=0
quiet=0
shares=()
envs=()

say() { printf 'svcproxy-vm: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' >&2; exit 2; }

add_share() { # DIR
	local d s
	d=$(cd "$1" 2>/dev/null && pwd -P) || { say "share $1: no such directory"; exit 2; }
	for s in "${shares[@]+"${shares[@]}"}"; do [ "$s" = "$d" ] && return 0; done
	shares+=("$d")
}

while getopts "w:e:t:m:kqh" opt; do
	case $opt in
	w) add_share "$OPTARG" ;;
	e) name=${OPTARG%%=*}
		[[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { say "-e $OPTARG: not a variable name"; exit 2; }
		case $OPTARG in
		*=*) envs+=("$OPTARG") ;;
		*) envs+=("$name=${!name-}") ;;
		esac ;;
	t) timeout_s=$OPTARG ;;
	m) mem=$OPTARG ;;
	k) keep=1 ;;
	q) quiet=1 ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || usage
case $timeout_s$mem in *[!0-9]*) say "-t and -m take whole numbers"; exit 2 ;; esac

# ---- preflight: anything wrong here is a VM failure (125), said loudly.
for f in kernel initramfs.cpio stamp; do
	[ -f "$cache/$f" ] || { say "no VM image in $cache (missing $f): run $here/build-image.sh"; exit 125; }
done
init_hash=$(sha256sum <"$here/init.sh" | cut -d' ' -f1)
grep -qx "init.sh $init_hash" "$cache/stamp" ||
	{ say "the VM image in $cache was built from another init.sh: run $here/build-image.sh"; exit 125; }
command -v qemu-system-x86_64 >/dev/null || { say "qemu-system-x86_64 not installed: run $here/build-image.sh"; exit 125; }

# Writable dirs that `go test` names in the test binary's flags (coverage,
# profiles), so what the test writes there reaches the host.
for a in "$@"; do
	case $a in
	-test.gocoverdir=* | -test.outputdir=*) [ -d "${a#*=}" ] && add_share "${a#*=}" ;;
	-test.coverprofile=/* | -test.cpuprofile=/* | -test.memprofile=/* | -test.blockprofile=/* | \
		-test.mutexprofile=/* | -test.trace=/*) [ -d "$(dirname "${a#*=}")" ] && add_share "$(dirname "${a#*=}")" ;;
	esac
done
[ -n "${GOCOVERDIR-}" ] && [ -d "$GOCOVERDIR" ] && add_share "$GOCOVERDIR"

ctl=$(mktemp -d "${TMPDIR:-/tmp}/svcproxy-vm.XXXXXX") || { say "cannot make a control dir"; exit 125; }
cleanup() {
	if [ "$keep" = 1 ]; then say "control dir kept: $ctl"; else rm -rf "$ctl"; fi
}
trap cleanup EXIT

# ---- the job: a POSIX shell script run inside the chroot.
# Single quotes for every word: /bin/sh (dash) has no $'...' quoting.
# shq sets REPLY (no command substitution: it would drop trailing newlines).
shq() { REPLY="'${1//\'/\'\\\'\'}'"; }
{
	echo '# written by run-in-vm.sh'
	echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/go/bin'
	echo 'export HOME=/root LANG=C.UTF-8 TERM=dumb'
	# pass-through from this shell, then -e, then the VM marker (last wins)
	while IFS= read -r name; do
		shq "${!name}"
		printf 'export %s=%s\n' "$name" "$REPLY"
	done < <(compgen -e | grep -E '^(SVCPROXY_[A-Z0-9_]*|GOCOVERDIR|GOTRACEBACK|GODEBUG|GOMAXPROCS)$')
	for kv in "${envs[@]+"${envs[@]}"}"; do
		shq "$kv"
		printf 'export %s\n' "$REPLY"
	done
	echo 'export SVCPROXY_IN_VM=1'
	shq "$PWD"
	printf 'cd %s || { echo "svcproxy-vm: the working directory is not visible inside the VM" >&2; exit 125; }\n' "$REPLY"
	printf 'exec'
	for a in "$@"; do
		shq "$a"
		printf ' %s' "$REPLY"
	done
	printf '\n'
} >"$ctl/job.sh"

# ---- 9p shares: the host root (read-only), the control dir, -w dirs.
fsargs=()
nfs=0
add_fs() { # TAG PATH [readonly]
	local id=fs$nfs ro=
	nfs=$((nfs + 1))
	[ "${3-}" = readonly ] && ro=,readonly=on
	fsargs+=(-fsdev "local,id=$id,path=$2,security_model=none,multidevs=remap$ro"
		-device "virtio-9p-pci,fsdev=$id,mount_tag=$1")
}
add_fs hostroot / readonly
add_fs svcctl "$ctl"
: >"$ctl/shares"
i=0
for s in "${shares[@]+"${shares[@]}"}"; do
	add_fs "share$i" "$s"
	printf 'share%d %s\n' "$i" "$s" >>"$ctl/shares"
	i=$((i + 1))
done

# ---- boot. TCG only: never -enable-kvm / -accel kvm.
# The chain keeps QEMU from outliving this script: timeout gets SIGTERM if
# this shell dies (and forwards it), QEMU gets SIGKILL if timeout dies.
start=$(date +%s.%N)
setpriv --pdeathsig TERM \
	timeout --kill-after=10 "$timeout_s" \
	setpriv --pdeathsig KILL \
	qemu-system-x86_64 \
	-accel tcg -cpu max -smp 1 -m "$mem" \
	-nodefaults -no-user-config -display none -vga none -nic none -no-reboot \
	-kernel "$cache/kernel" -initrd "$cache/initramfs.cpio" \
	-append "console=ttyS0 quiet panic=-1 random.trust_cpu=on mitigations=off ${SVCPROXY_VM_KERNEL_ARGS-}" \
	-device virtio-rng-pci \
	"${fsargs[@]}" \
	-chardev "file,id=console,path=$ctl/console.log" -serial chardev:console \
	-chardev stdio,id=job,signal=off -serial chardev:job \
	</dev/null &
vm=$!
interrupted=
trap 'interrupted=1; kill -TERM "$vm" 2>/dev/null' TERM INT HUP
while :; do
	wait "$vm"
	qrc=$?
	kill -0 "$vm" 2>/dev/null || break # else: wait was cut short by a signal
done
end=$(date +%s.%N)

console_tail() {
	say "last console lines (-k keeps the whole log):"
	tail -n 40 "$ctl/console.log" 2>/dev/null | sed 's/^/  | /' >&2
}

if [ -s "$ctl/status" ]; then
	rc=$(cat "$ctl/status")
elif [ -n "$interrupted" ]; then
	say "FAILED: interrupted by a signal; the VM was stopped"
	rc=125
elif [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
	say "FAILED: the VM hit the ${timeout_s}s cap (-t)"
	console_tail
	rc=124
else
	say "FAILED: the VM stopped without reporting a status (qemu exit $qrc)"
	console_tail
	rc=125
fi

if [ "$quiet" = 0 ]; then
	wall=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
	if [ -s "$ctl/clock" ] && read -r t0 t1 t2 <"$ctl/clock"; then
		say "$(awk -v w="$wall" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v rc="$rc" 'BEGIN {
			printf "wall %.2fs; guest uptime: init %.2fs, command start %.2fs, command took %.2fs; exit %s", w, t0, t1, t2 - t1, rc }')"
	else
		say "wall ${wall}s; exit $rc"
	fi
fi
exit "$rc"
