#!/usr/bin/env bash
# Installs every system package gpve needs to build, test and run, on Debian 12 as root.
# Idempotent and fast: apt is not touched at all when everything is already installed.
#
# Engineers: add packages to the list below, one per line, with the reason.
set -euo pipefail

PACKAGES=(
    # build
    build-essential         # cc/ld for crates that build C (ring, -sys crates)
    pkg-config              # locating C libraries for -sys crates
    clang                   # bindgen (foundationdb-sys with `--features fdb`)
    libclang-dev            # bindgen's libclang
    libnftnl-dev            # nftables firewall via nftnl (network crate)
    libmnl-dev              # netlink for nftnl
    ca-certificates         # TLS to the crate registry
    # hypervisor and test guests
    qemu-system-x86         # the hypervisor (TCG in tests)
    qemu-utils              # qemu-img for the dir storage driver
    busybox-static          # test guest initramfs
    cpio                    # packing the initramfs
    # storage and network
    btrfs-progs             # btrfs storage driver and its loop-mounted test images
    nftables                # firewall (nft) checks in network tests
    iproute2                # ip netns / bridges / veth in network tests
    iperf3                  # network throughput benchmarks
    iputils-ping            # reachability checks in network tests
    # vClusters
    etcd-server             # vCluster control-plane datastore
    openssl                 # vCluster tests: certificate chain checks, a TLS /readyz stand-in
    # tools
    tmux                    # `make run` helpers and the actor console
)

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: run as root (apt-get install needs it)" >&2
    exit 1
fi

missing_packages() {
    local pkg status
    for pkg in "${PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [[ "$status" == "installed" ]] || echo "$pkg"
    done
}

# Two rounds: installing one package can remove another. On the stock image qemu-utils
# comes from backports and Debian's qemu-system-x86 replaces it; the second round puts
# back a qemu-utils that matches.
for round in 1 2; do
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]} == 0)) && break
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    [[ $round == 1 ]] && apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
done
mapfile -t missing < <(missing_packages)
if ((${#missing[@]} > 0)); then
    echo "install-deps: still missing after install: ${missing[*]}" >&2
    exit 1
fi

# kubectl checks vCluster kubeconfigs. Debian ships it as kubernetes-client; a kubectl
# installed another way (e.g. a vendor package) is kept, since the two would conflict.
if ! command -v kubectl >/dev/null 2>&1; then
    echo "install-deps: installing kubernetes-client (kubectl)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubernetes-client
fi

# Rust: the workspace needs rustc >= 1.90 with rustfmt and clippy. Toolchains come from
# rustup, not from Debian (whose rustc is too old).
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    if command -v curl >/dev/null 2>&1 && curl -fsS --max-time 20 https://sh.rustup.rs -o /tmp/rustup-init.sh; then
        sh /tmp/rustup-init.sh -y --profile minimal --component rustfmt,clippy
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "install-deps: no Rust toolchain and rustup cannot be fetched; install Rust >= 1.90 with rustup (https://rustup.rs)" >&2
        exit 1
    fi
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            rustup component add "$component"
        else
            echo "install-deps: cargo ${component/rustfmt/fmt} is missing and rustup is not available" >&2
            exit 1
        fi
    fi
done
