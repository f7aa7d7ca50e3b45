#!/bin/sh
# init.sh: PID 1 of the svcproxy IPVS VM (installed as /init in the
# initramfs by build-image.sh; runs under static busybox).
#
# Contract with run-in-vm.sh, over two channels:
#
#  * 9p shares (virtio):
#      hostroot  the host's /, read-only. It becomes the command's root,
#                under a tmpfs overlay: writable, but writes stay in RAM.
#      svcctl    a host dir, writable: the job and its results. Seen by the
#                command at /run/svcproxy-vm. The host puts there
#                  job.sh   what to run (/bin/sh job.sh, inside the chroot)
#                  shares   "TAG PATH" lines: more writable 9p shares, each
#                           mounted at the same absolute PATH in the chroot
#                and this script writes back
#                  status   the job's exit status (absent = VM failure)
#                  clock    guest uptime at: init start, job start, job end
#  * serial ports: ttyS0 is the kernel console (the host logs it to a file);
#    ttyS1 carries the job's stdout and stderr (the host streams it).
#
# PID 1 keeps the initramfs as its root and only the job is chrooted, so the
# kernel's module autoloader keeps running the initramfs' /sbin/modprobe
# against the initramfs' modules.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
read -r t_init _ </proc/uptime

out=/dev/ttyS1
ctl=/ctl
root=/newroot
# msize: 9p's 8 KiB default makes loading host binaries slow.
p9=trans=virtio,version=9p2000.L,msize=524288

# Stops the VM without writing a status: the host reports a VM failure.
abort() {
	echo "svcproxy-vm init: $*" >"$out"
	echo "svcproxy-vm init: $*"
	poweroff -f
}

# The job's channel must pass bytes as they are (no CR added, no echo).
stty -F "$out" raw -echo 2>/dev/null

for m in virtio_pci 9pnet_virtio 9p overlay; do
	modprobe "$m" || abort "cannot load $m"
done

mkdir -p /lower /upper "$ctl"
mount -t 9p -o "$p9,ro" hostroot /lower || abort "cannot mount the host root (9p hostroot)"
mount -t 9p -o "$p9" svcctl "$ctl" || abort "cannot mount the control dir (9p svcctl)"
mount -t tmpfs -o mode=0755 upper /upper || abort "cannot mount the overlay's tmpfs"
mkdir -p /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay "$root" ||
	abort "cannot mount the overlay root"

# The IPVS core, every scheduler, dummy and veth; anything else autoloads.
# crc32c first: nf_conntrack (under ip_vs) needs the algorithm at load time.
modprobe crc32c_generic 2>/dev/null
while read -r m params; do
	# shellcheck disable=SC2086 # params are words
	modprobe "$m" $params || echo "svcproxy-vm init: cannot load $m" >"$out"
done </etc/boot-modules
ip link set lo up

# Kernel file systems for the chroot. /run is a fresh tmpfs: the host's
# /run (netns names, locks, pid files) must not show through. /tmp stays the
# host's, through the overlay, so `go test` binaries under /tmp/go-build* run.
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount -t devtmpfs devtmpfs "$root/dev"
mkdir -p "$root/dev/pts" "$root/dev/shm"
mount -t devpts devpts "$root/dev/pts"
mount -t tmpfs shm "$root/dev/shm"
mount -t tmpfs -o mode=0755 run "$root/run"
mkdir -p "$root/run/svcproxy-vm" "$root/run/netns" "$root/run/xtables"
mount --bind "$ctl" "$root/run/svcproxy-vm"

# This kernel's modules where the chroot's own (kmod) modprobe looks for
# them. /lib may be a symlink into /usr on the host: resolve it inside.
kver=$(uname -r)
moddir=$(chroot "$root" /bin/sh -c "mkdir -p /lib/modules/$kver && cd /lib/modules/$kver && pwd -P")
if [ -n "$moddir" ]; then
	mount --bind "/lib/modules/$kver" "$root$moddir" || echo "svcproxy-vm init: cannot bind the modules dir" >"$out"
fi

# Writable shares, each at its host path (mkdir in the overlay only).
if [ -s "$ctl/shares" ]; then
	while read -r tag path; do
		[ -n "$tag" ] || continue
		mkdir -p "$root$path"
		mount -t 9p -o "$p9" "$tag" "$root$path" || abort "cannot mount share $tag at $path"
	done <"$ctl/shares"
fi

read -r t_job _ </proc/uptime
chroot "$root" /bin/sh /run/svcproxy-vm/job.sh </dev/null >"$out" 2>&1
rc=$?
read -r t_end _ </proc/uptime

echo "$t_init $t_job $t_end" >"$ctl/clock"
echo "$rc" >"$ctl/status"
sync
umount "$root/run/svcproxy-vm" 2>/dev/null
umount "$ctl" 2>/dev/null
poweroff -f
