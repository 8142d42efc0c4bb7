# shellcheck shell=bash
# Shared by scripts/test, scripts/bench and scripts/demo: source it.

# The test bed's tools live in sbin.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "$(basename "$0"): run as root: the test bed makes network namespaces, veths and nftables rules" >&2
    exit 1
  fi
}

need_go() {
  if ! command -v go >/dev/null 2>&1; then
    if [ -x /usr/local/go/bin/go ]; then
      export PATH="$PATH:/usr/local/go/bin"
    else
      echo "$(basename "$0"): Go is not installed (go.mod asks for $(awk '/^go /{print $2}' go.mod))" >&2
      exit 1
    fi
  fi
}

# install_tools [COMMAND:PACKAGE...] installs, with apt-get, the packages of
# the test bed's commands that are missing, and of any extra pairs given (a
# COMMAND starting with / is a file that must exist).
install_tools() {
  local pair cmd missing=()
  for pair in ip:iproute2 nft:nftables ethtool:ethtool iperf3:iperf3 ping:iputils-ping \
    udhcpc:udhcpc dhclient:isc-dhcp-client dhcpcd:dhcpcd-base nsenter:util-linux \
    debootstrap:debootstrap systemd-nspawn:systemd-container "$@"; do
    cmd=${pair%%:*}
    case $cmd in
      /*) [ -e "$cmd" ] || missing+=("${pair#*:}") ;;
      *) command -v "$cmd" >/dev/null 2>&1 || missing+=("${pair#*:}") ;;
    esac
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
