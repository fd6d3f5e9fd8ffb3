#!/usr/bin/env bash
# Builds the end-to-end test's virtual machine: a Debian bookworm root file system with
# systemd as PID 1, python3 and python3-venv (what install.sh needs), a kernel and a small
# initrd, and an ext4 disk image made without loop mounts.
#
#   sudo tests/e2e/build-image.sh OUTDIR
#
# Writes OUTDIR/image.raw (3 GiB, sparse), OUTDIR/vmlinuz and OUTDIR/initrd.img. Needs root,
# debootstrap and network access to the Debian mirror ($SK_E2E_MIRROR). The checkout is not
# in the image: the test brings it in through a 9p share, so code changes need no rebuild.
# tests/e2e/e2e_vm.py caches the result keyed on this script and the files in image/.
set -euo pipefail

out=${1:?usage: build-image.sh OUTDIR}
mirror=${SK_E2E_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
packages=systemd,systemd-sysv,dbus,udev,kmod,procps,python3,python3-venv

if [[ $(id -u) -ne 0 ]]; then
    echo "build-image.sh: needs root (debootstrap, file ownership in the image)" >&2
    exit 1
fi
for tool in debootstrap mkfs.ext4 chroot; do
    command -v "$tool" >/dev/null || {
        echo "build-image.sh: $tool is missing (apt-get install debootstrap e2fsprogs)" >&2
        exit 1
    }
done

mkdir -p "$out"
work=$(mktemp -d "$out/build.XXXXXX")
root=$work/root
mounted=()
cleanup() {
    local m
    for m in "${mounted[@]}"; do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# In the chroot, only what we set: the host's pip, proxy and locale variables stay out.
in_root() {
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 \
        chroot "$root" "$@"
}

SECONDS=0
echo "build-image: debootstrap $suite from $mirror"
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
}
echo "build-image: debootstrap done (${SECONDS}s)"

mount -t proc proc "$root/proc" && mounted+=("$root/proc")

# A small initrd: only the modules this VM needs (virtio disk, 9p share, ext4).
in_root apt-get install -y -q --no-install-recommends initramfs-tools >"$work/apt.log" 2>&1 || {
    tail -n 30 "$work/apt.log" >&2
    exit 1
}
sed -i 's/^MODULES=.*/MODULES=list/' "$root/etc/initramfs-tools/initramfs.conf"
printf '%s\n' virtio_pci virtio_blk virtio_console ext4 9p 9pnet_virtio \
    >>"$root/etc/initramfs-tools/modules"
in_root apt-get install -y -q --no-install-recommends linux-image-amd64 >>"$work/apt.log" 2>&1 || {
    tail -n 30 "$work/apt.log" >&2
    exit 1
}
in_root apt-get clean
echo "build-image: kernel and initrd done (${SECONDS}s)"

umount "$root/proc"
mounted=()

# Boot settings: no console login, no first-boot questions, no timers that wake apt or dpkg.
echo sk-e2e >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tsk-e2e\n::1\tlocalhost ip6-localhost\n' >"$root/etc/hosts"
cat >"$root/etc/fstab" <<'FSTAB'
/dev/vda  /         ext4  rw,errors=remount-ro  0  1
hostshare /mnt/e2e  9p    trans=virtio,version=9p2000.L,msize=262144,nofail,x-systemd.device-timeout=20s  0  0
FSTAB
mkdir -p "$root/mnt/e2e"
for unit in systemd-firstboot.service getty@tty1.service serial-getty@ttyS0.service \
    apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer fstrim.timer e2scrub_all.timer \
    e2scrub_reap.service; do
    ln -sfn /dev/null "$root/etc/systemd/system/$unit"
done
# The machine id debootstrap generated stays: an empty one starts systemd-firstboot.
test -s "$root/etc/machine-id"

install -m 0755 "$here/image/sk-e2e-runner" "$root/usr/local/sbin/sk-e2e-runner"
install -m 0644 "$here/image/sk-e2e-runner.service" "$root/etc/systemd/system/sk-e2e-runner.service"
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sfn /etc/systemd/system/sk-e2e-runner.service \
    "$root/etc/systemd/system/multi-user.target.wants/sk-e2e-runner.service"

kernel=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | tail -n 1)
initrd=$(find "$root/boot" -maxdepth 1 -name 'initrd.img-*' | sort | tail -n 1)
if [[ -z $kernel || -z $initrd ]]; then
    echo "build-image.sh: no kernel or initrd under $root/boot" >&2
    exit 1
fi
cp "$kernel" "$work/vmlinuz"
cp "$initrd" "$work/initrd.img"
rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*_Packages

mkfs.ext4 -q -F -L sk-e2e -d "$root" "$work/image.raw" 3G
mv "$work/vmlinuz" "$work/initrd.img" "$work/image.raw" "$out/"
echo "build-image: $out/image.raw ready (${SECONDS}s)"
