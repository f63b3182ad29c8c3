#!/usr/bin/env bash
# Anther on aarch64 without an aarch64 machine: a Debian bookworm arm64 userland (what
# Raspberry Pi OS and Termux's proot-distro Debian are) run under qemu-user with the
# Cortex-A76 CPU model (the Raspberry Pi 5's core). It installs this commit as the README's
# Pi section does, runs the kernel tests there (the recorded golden values included), and
# joins an aarch64 SuperNode to an x86-64 SuperLink and SuperNode with TLS and node
# authentication for two rounds of LoRA on tiny-bert. Speeds under emulation mean nothing;
# what it checks is that everything installs, imports and computes the same.
#
#   sudo benchmarks/arm64_emulated.sh [ROOTFS]      # default /var/tmp/anther-arm64
#
# Needs root, Debian's packages (qemu-user-static, debootstrap, binfmt-support) and PyPI.
# Reuses ROOTFS and its venv when they exist. TORCH_INDEX=URL installs torch from that
# index (e.g. https://download.pytorch.org/whl/cpu, as on a Pi); without it, PyPI's
# aarch64 torch 2.13.0 is a CUDA build that brings ten nvidia-* packages (6.2 GB).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOTFS=${1:-/var/tmp/anther-arm64}
FED=$(mktemp -d /tmp/anther-arm64-fed.XXXXXX)
export QEMU_CPU=cortex-a76 HF_HUB_OFFLINE=1
say() { echo "== $(date +%T) $*"; }

in_arm64() {  # a command in the aarch64 userland, with a clean environment
  chroot "$ROOTFS" /usr/bin/env -i PATH=/root/env/bin:/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    QEMU_CPU=cortex-a76 HF_HUB_OFFLINE=1 PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DEFAULT_TIMEOUT=180 PIP_DISABLE_PIP_VERSION_CHECK=1 /bin/bash -c "$1"
}

cleanup() {
  in_arm64 "anther-deploy stop /root/fed" >/dev/null 2>&1 || true
  "$REPO/.venv/bin/anther-deploy" stop "$FED" >/dev/null 2>&1 || true
  for m in dev/shm dev proc; do mountpoint -q "$ROOTFS/$m" && umount "$ROOTFS/$m"; done
  rm -rf "$FED"
}
trap cleanup EXIT

say "packages: qemu-user-static, debootstrap"
command -v qemu-aarch64-static >/dev/null && command -v debootstrap >/dev/null ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static debootstrap binfmt-support >/dev/null
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
  say "Debian bookworm arm64 into $ROOTFS (debootstrap, under emulation: about 10 minutes)"
  debootstrap --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,python3-pip,git,ca-certificates,procps bookworm "$ROOTFS" http://deb.debian.org/debian
fi

# The kernel lets a chroot read the host's /sys; PyTorch's oneDNN reads the CPU's MIDR_EL1
# there and crashes without it, so the userland gets a /sys that names a Cortex-A76.
mountpoint -q "$ROOTFS/sys" && umount "$ROOTFS/sys"
for c in 0 1; do
  mkdir -p "$ROOTFS/sys/devices/system/cpu/cpu$c/regs/identification"
  echo 0x00000000414fd0b1 > "$ROOTFS/sys/devices/system/cpu/cpu$c/regs/identification/midr_el1"
  echo 0x0000000000000000 > "$ROOTFS/sys/devices/system/cpu/cpu$c/regs/identification/revidr_el1"
done
for f in online possible present; do echo 0-1 > "$ROOTFS/sys/devices/system/cpu/$f"; done
mountpoint -q "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
mountpoint -q "$ROOTFS/dev" || mount --bind /dev "$ROOTFS/dev"
mountpoint -q "$ROOTFS/dev/shm" || mount --bind /dev/shm "$ROOTFS/dev/shm"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"  # a proxy's CA, where there is one

say "this commit ($(git -C "$REPO" rev-parse --short HEAD)) into the userland"
rm -rf "$ROOTFS/root/anther" && git clone -q "$REPO" "$ROOTFS/root/anther"
[ -d "$REPO/../shared" ] && rm -rf "$ROOTFS/root/shared" && cp -r "$REPO/../shared" "$ROOTFS/root/shared"
if [ ! -x "$ROOTFS/root/env/bin/anther-deploy" ]; then
  say "installing as the README's Pi section does (under emulation: about 10 minutes)"
  in_arm64 "python3 -m venv /root/env && pip install -q --upgrade pip &&
    pip install -q torch==2.13.0 ${TORCH_INDEX:+--index-url $TORCH_INDEX} && pip install -q -e '/root/anther[dev]'"
else
  in_arm64 "pip install -q --no-deps -e '/root/anther[dev]'"
fi
in_arm64 "python -c 'import platform, torch, numba, flwr; print(platform.machine(), platform.python_version(),
  \"torch\", torch.__version__, \"numba\", numba.__version__, \"flwr\", flwr.__version__)'"

say "kernel tests on aarch64 (golden values, backends against the reference, lowering)"
in_arm64 "cd /root/anther && python -m pytest -q -p no:cacheprovider --durations=0 tests/kernels | tail -3"

say "a federation: SuperLink and SuperNode 0 on $(uname -m), SuperNode 1 on aarch64, TLS and node auth"
ADS="$REPO/.venv/bin/anther-deploy"
"$ADS" init "$FED" --nodes 2 >/dev/null
"$ADS" superlink "$FED"
"$ADS" supernode "$FED" --node 0 --superlink 127.0.0.1:9093
rm -rf "$ROOTFS/root/fed" && mkdir -p "$ROOTFS/root/fed/tls" "$ROOTFS/root/fed/nodes"
cp "$FED/deploy.json" "$ROOTFS/root/fed/" && cp "$FED/tls/ca.crt" "$ROOTFS/root/fed/tls/"
cp -a "$FED/nodes/node-1" "$ROOTFS/root/fed/nodes/"
in_arm64 "anther-deploy supernode /root/fed --node 1 --superlink 127.0.0.1:9093"
"$ADS" run "$FED" model=tiny-bert rounds=2 data.num_examples=240 data.test_size=60 local_steps=2 batch_size=8 \
  timeout_s=900 --name mixed
python3 - "$FED/runs/mixed/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for r in rows[1:]:
    print(f"round {r['round']}: {r['clients']} clients, {r['failures']} failures, train loss {r['train_loss']!r}, "
          f"eval accuracy {r['eval_accuracy']!r}, bytes up {r['bytes_up']}")
assert all(r["clients"] == 2 and r["failures"] == 0 for r in rows[1:]), "a client did not train every round"
EOF
say "done"
