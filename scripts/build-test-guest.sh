#!/bin/sh
# Builds the gpve test guest: the Debian cloud kernel plus a busybox-static
# initramfs. The guest prints GPVE-TEST-GUEST-READY on ttyS0, then runs a shell
# on ttyS0 (so tests can type into the serial console), and powers off on an
# ACPI power-button press (acpid + button/evdev modules from the same kernel).
# With virtio_net (and its virtio/failover dependencies) loaded, the first NIC
# (eth0) is brought up before READY when the kernel command line carries
# gpve.ip=ADDR/PREFIX, so network tests can ping the guest.
#
# Usage: build-test-guest.sh [CACHE_DIR]   (default /var/cache/gpve/test-guest)
# Outputs: CACHE_DIR/vmlinuz and CACHE_DIR/initramfs.gz. Idempotent: exits
# early when both exist and match GUEST_VERSION. Needs: apt-get, dpkg-deb, busybox-static, cpio, gzip.
set -eu

CACHE_DIR="${1:-/var/cache/gpve/test-guest}"
KERNEL="$CACHE_DIR/vmlinuz"
INITRD="$CACHE_DIR/initramfs.gz"

STAMP="$CACHE_DIR/guest-version"
# Bump when the guest contents change so cached outputs are rebuilt.
GUEST_VERSION=8

if [ -s "$KERNEL" ] && [ -s "$INITRD" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$GUEST_VERSION" ]; then
    exit 0
fi

for tool in apt-get apt-cache dpkg-deb cpio gzip; do
    command -v "$tool" >/dev/null 2>&1 || { echo "build-test-guest: $tool is not installed" >&2; exit 1; }
done
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || { echo "build-test-guest: $BUSYBOX is missing; install busybox-static" >&2; exit 1; }
case "$(ldd "$BUSYBOX" 2>&1 || true)" in
    *"not a dynamic executable"*|*"statically linked"*) ;;
    *) echo "build-test-guest: $BUSYBOX is not static; install busybox-static" >&2; exit 1 ;;
esac

mkdir -p "$CACHE_DIR"
WORK="$(mktemp -d "$CACHE_DIR/.build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# linux-image-cloud-amd64 is a metapackage: resolve the versioned image package.
PKG="$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[^ ]*-cloud-amd64\)$/\1/p' | head -n1)"
if [ -z "$PKG" ]; then
    echo "build-test-guest: cannot resolve linux-image-cloud-amd64 (run apt-get update?)" >&2
    exit 1
fi
# apt-get download writes to the current directory; _apt cannot read private
# temp dirs, so the sandbox warning is expected when running as root.
(cd "$WORK" && apt-get download -q "$PKG" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
DEB="$(ls "$WORK"/*.deb 2>/dev/null | head -n1)"
[ -n "$DEB" ] || { echo "build-test-guest: apt-get download $PKG produced no .deb" >&2; exit 1; }
dpkg-deb -x "$DEB" "$WORK/pkg"
VMLINUZ="$(ls "$WORK"/pkg/boot/vmlinuz-* | head -n1)"
KVER="${VMLINUZ##*/vmlinuz-}"
MODDIR="$WORK/pkg/lib/modules/$KVER/kernel"

ROOT="$WORK/root"
mkdir -p "$ROOT/bin" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev" "$ROOT/tmp" "$ROOT/lib/modules" "$ROOT/etc/acpi/PWRF"
cp "$BUSYBOX" "$ROOT/bin/busybox"
# Modules are uncompressed in Debian 12 kernels; busybox insmod loads them as-is,
# without resolving dependencies, so they are loaded in the order listed here
# (dependencies first), kept in /lib/modules/order.
for m in drivers/acpi/button.ko drivers/input/evdev.ko \
    drivers/virtio/virtio_ring.ko drivers/virtio/virtio.ko \
    drivers/virtio/virtio_pci_modern_dev.ko drivers/virtio/virtio_pci_legacy_dev.ko \
    drivers/virtio/virtio_pci.ko net/core/failover.ko drivers/net/net_failover.ko \
    drivers/net/virtio_net.ko; do
    if [ -f "$MODDIR/$m" ]; then
        cp "$MODDIR/$m" "$ROOT/lib/modules/"
        echo "/lib/modules/${m##*/}" >> "$ROOT/lib/modules/order"
    fi
done

# busybox acpid maps the power button key to event PWRF/00000080 and runs
# /etc/acpi/PWRF/00000080. poweroff -f calls reboot(2) directly because PID 1
# is a shell, not busybox init, so it would ignore the poweroff signal.
cat > "$ROOT/etc/acpi/PWRF/00000080" <<'ACPI'
#!/bin/sh
echo "GPVE-TEST-GUEST-POWEROFF" > /dev/ttyS0
sync
poweroff -f
ACPI
chmod 755 "$ROOT/etc/acpi/PWRF/00000080"

cat > "$ROOT/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r m; do insmod "$m" 2>/dev/null || echo "GPVE-TEST-GUEST-INSMOD-FAILED $m" > /dev/ttyS0; done < /lib/modules/order
# gpve.ip=ADDR/PREFIX on the kernel command line configures eth0 (bounded wait
# for the NIC to be probed: 5 s); without a NIC the guest still becomes ready.
GPVE_IP=$(sed -n 's/.*gpve\.ip=\([^ ]*\).*/\1/p' /proc/cmdline)
ip link set lo up
if [ -n "$GPVE_IP" ]; then
    i=0
    while [ $i -lt 50 ] && [ ! -e /sys/class/net/eth0 ]; do sleep 0.1; i=$((i + 1)); done
    if ip addr add "$GPVE_IP" dev eth0 && ip link set eth0 up; then
        echo "GPVE-TEST-GUEST-NET $GPVE_IP" > /dev/ttyS0
    else
        echo "GPVE-TEST-GUEST-NO-NET" > /dev/ttyS0
    fi
fi
# busybox acpid needs /var/log for its default log file or it exits at once;
# -f (no daemonizing) makes $! its pid, which the readiness check below needs.
mkdir -p /var/log /var/run
acpid -f -c /etc/acpi </dev/null >/dev/null 2>&1 &
ACPID_PID=$!
# A power-button press before acpid opened the input device would be lost, so
# READY is only printed once acpid holds every event device (bounded: 10 s).
i=0
NDEV=$(ls /dev/input/ | grep -c '^event')
while [ $i -lt 100 ] && [ "$(ls -l /proc/$ACPID_PID/fd 2>/dev/null | grep -c /dev/input/event)" -lt "$NDEV" ]; do
    sleep 0.1
    i=$((i + 1))
done
[ $i -lt 100 ] || echo "GPVE-TEST-GUEST-NO-ACPID" > /dev/ttyS0
echo "GPVE-TEST-GUEST-READY" > /dev/ttyS0
# A shell on the serial console answers typed commands; respawn it if it exits.
while true; do
    setsid sh -c 'exec sh -i </dev/ttyS0 >/dev/ttyS0 2>&1'
    sleep 1
done
INIT
chmod 755 "$ROOT/init"

(cd "$ROOT" && find . | cpio -o -H newc --quiet) | gzip -9 > "$WORK/initramfs.gz"
cp "$VMLINUZ" "$WORK/vmlinuz"
# Rename into place last so a partial build never looks complete.
mv "$WORK/vmlinuz" "$KERNEL.tmp" && mv "$KERNEL.tmp" "$KERNEL"
mv "$WORK/initramfs.gz" "$INITRD.tmp" && mv "$INITRD.tmp" "$INITRD"
echo "$GUEST_VERSION" > "$STAMP"
echo "build-test-guest: built $KERNEL ($KVER) and $INITRD"
