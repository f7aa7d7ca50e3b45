#!/usr/bin/env bash
# build-image.sh: prepare what the svcproxy IPVS VM boots.
#
# The dev/CI kernel has no IPVS and cannot load modules, so svcproxy's IPVS
# mode is exercised in a throwaway QEMU guest running Debian's stock kernel
# (see README.md next to this file). This script makes, in the cache dir:
#
#   kernel           Debian's kernel from the linux-image package, as the
#                    plain ELF vmlinux that QEMU boots directly (PVH entry);
#                    the bzImage if it cannot be unpacked
#   initramfs.cpio   static busybox + the kernel modules the tests need
#                    + init.sh as /init (uncompressed: under TCG a plain
#                    cpio unpacks faster than a compressed one)
#   stamp            what the image was built from: the kernel package and
#                    version, and hashes of init.sh and of this script
#   debs/            the downloaded .deb files (kept, so rebuilds are offline)
#
# Usage: build-image.sh [-f] [-r]
#   -f   rebuild the initramfs even when the stamp says it is current
#   -r   re-resolve linux-image-amd64 with apt (pick up a newer kernel)
#
# Environment: SVCPROXY_VM_DIR  cache dir (default /var/cache/svcproxy-vm).
# It lives outside /tmp on purpose: it survives reboots and CI runs on the
# same machine, so a warm call costs a few dpkg-query calls and a hash.
#
# Needs root for apt-get (only when something is missing). Touches nothing in
# the host's network namespace.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${SVCPROXY_VM_DIR:-/var/cache/svcproxy-vm}
force=0
refresh=0
while getopts "frh" opt; do
	case $opt in
	f) force=1 ;;
	r) refresh=1 ;;
	*) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2 ;;
	esac
done

say() { printf 'build-image: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# Host packages: the VM's tools, and the programs the tests run inside the
# guest (the guest's root file system is the host's, so they are host
# packages too). curl, not busybox wget: Debian 12's static wget crashes.
host_packages=(qemu-system-x86 busybox-static kmod cpio util-linux xz-utils
	iptables ipset ipvsadm conntrack curl iproute2)

# apt-get update once per run, and only when apt needs it.
apt_updated=0
apt_update() {
	[ "$apt_updated" = 1 ] && return 0
	say "apt-get update"
	apt-get update -qq || die "apt-get update failed"
	apt_updated=1
}

ensure_host_packages() {
	local missing=() p
	for p in "${host_packages[@]}"; do
		if ! dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed; then
			missing+=("$p")
		fi
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	[ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}) and not root: install them with apt-get"
	say "installing ${missing[*]}"
	# The package lists may be empty or stale on a fresh machine.
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
		apt_update
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}" >/dev/null ||
			die "apt-get install ${missing[*]} failed"
	fi
}

# The versioned image package that the linux-image-amd64 meta package
# depends on, e.g. "linux-image-6.1.0-56-amd64".
resolve_kernel_package() {
	local info
	info=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null) || true
	if [ -z "$info" ]; then
		apt_update
		info=$(apt-cache show --no-all-versions linux-image-amd64) || die "apt knows no linux-image-amd64"
	fi
	sed -n 's/^Depends:.*\(linux-image-[0-9][^ ,]*\).*/\1/p' <<<"$info" | head -n1
}

# Makes sure debs/ holds exactly one versioned kernel package; prints its path.
fetch_kernel() {
	local debs=$cache/debs have pkg tmp
	mkdir -p "$debs"
	have=$(find "$debs" -maxdepth 1 -name 'linux-image-[0-9]*.deb' | sort | tail -n1)
	if [ -n "$have" ] && [ "$refresh" = 0 ]; then
		echo "$have"
		return 0
	fi
	pkg=$(resolve_kernel_package)
	[ -n "$pkg" ] || die "cannot tell which package linux-image-amd64 depends on"
	if [ -n "$have" ] && [ "$(dpkg-deb -f "$have" Package)" = "$pkg" ]; then
		echo "$have"
		return 0
	fi
	say "downloading linux-image-amd64 and $pkg"
	tmp=$(mktemp -d "$cache/download.XXXXXX")
	# Sandbox user root: apt's _apt user may not write into a root-only dir.
	(cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root linux-image-amd64 "$pkg") >&2 ||
		{ rm -rf "$tmp"; die "apt-get download $pkg failed"; }
	rm -f "$debs"/*.deb
	mv "$tmp"/*.deb "$debs"/
	rmdir "$tmp"
	find "$debs" -maxdepth 1 -name "${pkg}_*.deb" | head -n1
}

# One line per input that the image depends on; a different text means a
# rebuild is due.
stamp_text() { # KERNEL_DEB
	printf 'kernel %s %s\n' "$(dpkg-deb -f "$1" Package)" "$(dpkg-deb -f "$1" Version)"
	printf 'init.sh %s\n' "$(sha256sum <"$here/init.sh" | cut -d' ' -f1)"
	printf 'build-image.sh %s\n' "$(sha256sum <"$here/build-image.sh" | cut -d' ' -f1)"
}

# Module selection. Whole directories for the subsystems the tests touch, so
# that whatever iptables, ipset, ipvsadm or ip ask the kernel to autoload is
# there; single files for the devices; the dependencies are added from
# modules.dep afterwards.
module_dirs=(
	net/netfilter net/ipv4 net/ipv6 net/bridge net/sched net/core net/llc
	net/802 net/8021q net/9p net/packet net/netlink net/key net/xfrm
	net/psample net/unix fs/9p fs/netfs fs/fscache fs/overlayfs
	drivers/virtio drivers/net/vxlan drivers/net/ipvlan
)
module_files=(
	drivers/net/dummy.ko drivers/net/veth.ko drivers/net/virtio_net.ko
	drivers/net/macvlan.ko drivers/net/tun.ko drivers/net/ifb.ko
	drivers/net/vrf.ko drivers/net/nlmon.ko drivers/net/net_failover.ko
	drivers/char/hw_random/virtio-rng.ko crypto/crc32c_generic.ko
	arch/x86/crypto/crc32c-intel.ko lib/libcrc32c.ko
)

# Prints the selected modules plus everything they depend on, as paths
# relative to the modules dir ("kernel/net/...ko").
select_modules() { # MODDIR
	local mdir=$1 d f
	{
		for d in "${module_dirs[@]}"; do
			[ -d "$mdir/kernel/$d" ] && (cd "$mdir" && find "kernel/$d" -name '*.ko*')
		done
		for f in "${module_files[@]}"; do
			[ -e "$mdir/kernel/$f" ] && echo "kernel/$f"
		done
	} | sort -u >"$work/wanted"
	# modules.dep lists every (transitive) dependency of a module on its line.
	awk -F': *' 'NR == FNR { want[$1] = 1; next }
		($1 in want) { print $1; n = split($2, deps, " "); for (i = 1; i <= n; i++) print deps[i] }' \
		"$work/wanted" "$mdir/modules.dep" | sort -u
}

# Writes the plain ELF kernel inside a bzImage to OUT. Debian's kernel has
# CONFIG_PVH, so QEMU can jump straight into that ELF: under TCG this saves
# the ~2.4 s that firmware plus the guest's own decompression take on every
# boot. Tries each compression format at each place its magic occurs.
extract_vmlinux() { # BZIMAGE OUT
	local fmt magic cmd off
	for fmt in 'xz:\xfd7zXZ\x00:xz -dcq --single-stream' 'zstd:\x28\xb5\x2f\xfd:zstd -dcq' 'gzip:\x1f\x8b\x08:gzip -dcq'; do
		magic=${fmt#*:}
		cmd=${magic#*:}
		magic=${magic%%:*}
		command -v "${cmd%% *}" >/dev/null || continue
		for off in $(LC_ALL=C grep -obUaP "$magic" "$1" | cut -d: -f1); do
			# shellcheck disable=SC2086 # cmd is a command and its flags
			# (tail may die of SIGPIPE once the decompressor has its stream)
			{ tail -c +$((off + 1)) "$1" || true; } | $cmd >"$2" 2>/dev/null || continue
			[ "$(head -c 4 "$2" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] && return 0
		done
	done
	rm -f "$2"
	return 1
}

build() { # KERNEL_DEB
	local deb=$1 kroot stage kver mdir smdir m
	work=$(mktemp -d "$cache/work.XXXXXX")
	trap 'rm -rf "$work"' EXIT
	kroot=$work/kernel
	stage=$work/root

	say "unpacking $(basename "$deb")"
	dpkg-deb -x "$deb" "$kroot"
	kver=$(basename "$(find "$kroot/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)")
	if [ -z "$kver" ] || [ ! -f "$kroot/boot/vmlinuz-$kver" ]; then
		die "no kernel in $deb"
	fi
	mdir=$kroot/lib/modules/$kver
	# The package ships no modules.dep (the postinst makes it): make one for
	# the full tree to find dependencies, then one for the staged subset.
	depmod -b "$kroot" "$kver" || die "depmod on the full module tree failed"

	mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,run,tmp,newroot}
	# Static busybox with every applet linked. /sbin/modprobe is the one the
	# kernel runs to autoload modules, and it stays the initramfs' copy
	# because PID 1 never changes its root (only the command is chrooted).
	cp /bin/busybox "$stage/bin/busybox"
	for m in $("$stage/bin/busybox" --list-full); do
		[ -e "$stage/$m" ] || ln -s /bin/busybox "$stage/$m"
	done

	smdir=$stage/lib/modules/$kver
	mkdir -p "$smdir"
	select_modules "$mdir" >"$work/modules"
	(cd "$mdir" && cpio -pdm --quiet "$smdir") <"$work/modules"
	cp "$mdir"/modules.builtin "$mdir"/modules.builtin.modinfo "$mdir"/modules.order "$smdir"/
	depmod -b "$stage" "$kver" 2>"$work/depmod.log" || { cat "$work/depmod.log" >&2; die "depmod on the staged modules failed"; }

	# Loaded at every boot, before the command runs, one "MODULE [PARAM...]"
	# per line: the IPVS core and every scheduler (so /proc/net/ip_vs exists
	# and `ipvsadm -s X` works at once, as on a kube-proxy IPVS node) and the
	# link types the tests create. numdummies=0: no stray dummy0, the root
	# netns keeps only lo.
	{
		printf '%s\n' ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_lblc ip_vs_lblcr \
			ip_vs_dh ip_vs_sh ip_vs_sed ip_vs_nq ip_vs_mh ip_vs_fo ip_vs_ovf veth
		echo 'dummy numdummies=0'
	} >"$stage/etc/boot-modules"
	install -m 0755 "$here/init.sh" "$stage/init"

	(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) >"$cache/initramfs.cpio.new"
	if extract_vmlinux "$kroot/boot/vmlinuz-$kver" "$cache/kernel.new"; then
		echo pvh >"$cache/kernel-format"
	else
		say "WARNING: cannot unpack vmlinuz-$kver; booting the bzImage (about 2.4 s slower)"
		cp "$kroot/boot/vmlinuz-$kver" "$cache/kernel.new"
		echo bzimage >"$cache/kernel-format"
	fi
	mv "$cache/kernel.new" "$cache/kernel"
	mv "$cache/initramfs.cpio.new" "$cache/initramfs.cpio"
	say "kernel $kver, $(wc -l <"$work/modules") modules, initramfs $(du -h "$cache/initramfs.cpio" | cut -f1)"
	rm -rf "$work"
	trap - EXIT
}

main() {
	mkdir -p "$cache" || die "cannot create $cache"
	# One builder at a time (parallel test packages may all call this).
	exec 9>"$cache/.lock"
	flock 9

	ensure_host_packages
	local deb want
	deb=$(fetch_kernel)
	[ -f "$deb" ] || die "no kernel package in $cache/debs"
	want=$(stamp_text "$deb")
	if [ "$force" = 0 ] && [ -f "$cache/kernel" ] && [ -f "$cache/initramfs.cpio" ] &&
		[ "$(cat "$cache/stamp" 2>/dev/null)" = "$want" ]; then
		say "image in $cache is current ($(head -n1 "$cache/stamp"))"
		return 0
	fi
	rm -f "$cache/stamp"
	build "$deb"
	printf '%s\n' "$want" >"$cache/stamp"
	say "image ready in $cache"
}

main
