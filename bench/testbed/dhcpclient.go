package testbed

// DHCP clients in VMs. Each client runs with a hook script of ours that
// configures only the VM's own interface, inside the VM's namespace, and
// appends what it did to a log; no client touches shared files such as
// /etc/resolv.conf or the host's lease databases:
//
//   - udhcpc (busybox) and dhclient run the script for every change, and
//     are given their lease and pid files in the caller's directory;
//   - dhcpcd configures the address itself and keeps its state under
//     /run/dhcpcd and /var/lib/dhcpcd, so PrivateDhcpcd runs it over
//     private, empty tmpfs copies of both, with no system config (-f
//     /dev/null) and our script instead of dhcpcd-run-hooks (-c).

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/ringnet/ringnet/node"
)

// The DHCP clients the bed runs.
const (
	Udhcpc   = "udhcpc"
	Dhclient = "dhclient"
	Dhcpcd   = "dhcpcd"
)

// Hook scripts; @LOG@ is the log's path (dhclient gives its script an
// environment of its own). Each logs "<event> <addr>/<mask> ..." when it
// configures an address, and "<event>" when it removes it or for any
// other event. A renewal that keeps the address leaves the interface
// alone, as distributions' scripts do: flushing it would flush the
// neighbour table too, and a release sent right after would then wait on
// ARP and be dropped by the kernel when the release's own deconfig
// removes the address.
var dhcpScripts = map[string]string{
	Udhcpc: `#!/bin/sh
case "$1" in
bound|renew)
	ip -4 addr show dev "$interface" | grep -q "inet $ip/" || ip addr flush dev "$interface"
	ip addr replace "$ip/$mask" dev "$interface"
	[ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
	echo "$1 $ip/$mask mtu=$mtu lease=$lease" >> "@LOG@" ;;
deconfig)
	ip addr flush dev "$interface"
	echo "$1" >> "@LOG@" ;;
*)
	echo "$1" >> "@LOG@" ;;
esac
`,
	Dhclient: `#!/bin/sh
case "$reason" in
BOUND|RENEW|REBIND|REBOOT)
	ip -4 addr show dev "$interface" | grep -q "inet $new_ip_address/" || ip addr flush dev "$interface"
	ip addr replace "$new_ip_address/$new_subnet_mask" dev "$interface"
	[ -n "$new_interface_mtu" ] && ip link set dev "$interface" mtu "$new_interface_mtu"
	echo "$reason $new_ip_address/$new_subnet_mask mtu=$new_interface_mtu lease=$new_dhcp_lease_time" >> "@LOG@" ;;
RELEASE|EXPIRE|STOP)
	ip addr flush dev "$interface"
	echo "$reason" >> "@LOG@" ;;
esac
`,
	// dhcpcd has added (or removed) the address itself by the time it
	// runs the script; the MTU is left to hooks, so to this one.
	Dhcpcd: `#!/bin/sh
case "$reason" in
BOUND|RENEW|REBIND|REBOOT)
	[ -n "$new_interface_mtu" ] && ip link set dev "$interface" mtu "$new_interface_mtu"
	echo "$reason $new_ip_address/$new_subnet_cidr mtu=$new_interface_mtu lease=$new_dhcp_lease_time" >> "@LOG@" ;;
*)
	echo "$reason" >> "@LOG@" ;;
esac
`,
}

// WriteDHCPScript writes client's hook script to path, executable, with
// its log at logPath.
func WriteDHCPScript(client, path, logPath string) error {
	body, ok := dhcpScripts[client]
	if !ok {
		return fmt.Errorf("dhcp script: no client %q", client)
	}
	return os.WriteFile(path, []byte(strings.ReplaceAll(body, "@LOG@", logPath)), 0o755)
}

// privateDhcpcd mounts empty tmpfs over dhcpcd's state directories, then
// runs dhcpcd. A directory the host lacks (/run/dhcpcd exists only once
// a dhcpcd ran) is made inside a tmpfs mounted over its parent, so that
// nothing is created on the host either.
const privateDhcpcd = `set -e
private() {
	if [ -d "$1" ]; then
		mount -t tmpfs -o mode=0755 ringnet-dhcpcd "$1"
	else
		mount -t tmpfs -o mode=0755 ringnet-dhcpcd "${1%/*}"
		mkdir -p "$1"
	fi
}
private /run/dhcpcd
private /var/lib/dhcpcd
exec dhcpcd "$@"
`

// PrivateDhcpcd returns the command line that runs `dhcpcd args...` over
// private, empty copies of /run/dhcpcd and /var/lib/dhcpcd. It must run
// under `ip netns exec` (VM.Start, VM.Command), whose mount namespace of
// its own, a slave of the host's, keeps the mounts from the host.
// dhcpcd's control commands (-N, -n, -k) find the daemon through its
// socket in /run/dhcpcd: run them with DhcpcdControl.
func PrivateDhcpcd(args ...string) []string {
	return append([]string{"sh", "-c", privateDhcpcd, "dhcpcd-private"}, args...)
}

// DhcpcdControl returns the command line that runs `dhcpcd args...` in
// the mount namespace of the dhcpcd with process ID pid, which
// PrivateDhcpcd started: there it finds the daemon's control socket.
func DhcpcdControl(pid int, args ...string) []string {
	return append([]string{"nsenter", "-t", strconv.Itoa(pid), "-m", "dhcpcd"}, args...)
}

// DHCPClient is a DHCP client running in a VM on its TAP device.
type DHCPClient struct {
	*Proc
	// Log is the hook script's log.
	Log string
}

// StartUdhcpc starts busybox udhcpc in the VM, in the foreground on
// TAPName, with its hook script, log and pid file in dir: it sends a
// DISCOVER every second, and goes on asking until it has a lease. USR1
// renews, USR2 releases.
func (vm *VM) StartUdhcpc(dir string) (*DHCPClient, error) {
	script, log := filepath.Join(dir, "udhcpc.sh"), filepath.Join(dir, "udhcpc.log")
	if err := WriteDHCPScript(Udhcpc, script, log); err != nil {
		return nil, err
	}
	p, err := vm.Start("udhcpc", "-f", "-i", TAPName, "-s", script, "-t", "5", "-T", "1", "-A", "1",
		"-p", filepath.Join(dir, "udhcpc.pid"))
	if err != nil {
		return nil, err
	}
	return &DHCPClient{Proc: p, Log: log}, nil
}

// Addr is the address the client's script configured last, with its
// prefix length; ok is false before the first, or after the script
// removed it.
func (c *DHCPClient) Addr() (addr netip.Prefix, ok bool) {
	data, err := os.ReadFile(c.Log)
	if err != nil {
		return netip.Prefix{}, false
	}
	return LastDHCPAddr(data)
}

// LastDHCPAddr reads a hook script's log (see WriteDHCPScript) and
// returns the address configured last, if it still is.
func LastDHCPAddr(log []byte) (netip.Prefix, bool) {
	var addr netip.Prefix
	sc := bufio.NewScanner(bytes.NewReader(log))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		switch strings.ToLower(f[0]) {
		case "bound", "renew", "rebind", "reboot":
			if len(f) > 1 {
				if p, err := parseAddrMask(f[1]); err == nil {
					addr = p
				}
			}
		case "deconfig", "release", "expire", "stop", "nak":
			addr = netip.Prefix{}
		}
	}
	return addr, addr.IsValid()
}

// parseAddrMask reads "10.0.0.1/24" or "10.0.0.1/255.255.255.0".
func parseAddrMask(s string) (netip.Prefix, error) {
	a, m, ok := strings.Cut(s, "/")
	if !ok {
		return netip.Prefix{}, fmt.Errorf("%q: no mask", s)
	}
	addr, err := netip.ParseAddr(a)
	if err != nil {
		return netip.Prefix{}, err
	}
	if bits, err := strconv.Atoi(m); err == nil {
		return prefixFrom(addr, bits)
	}
	mask, err := netip.ParseAddr(m)
	if err != nil || !mask.Is4() {
		return netip.Prefix{}, fmt.Errorf("%q: bad mask", s)
	}
	b := mask.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	bits := 0
	for v&(1<<31) != 0 {
		bits++
		v <<= 1
	}
	if v != 0 {
		return netip.Prefix{}, fmt.Errorf("%q: mask is not contiguous", s)
	}
	return prefixFrom(addr, bits)
}

// prefixFrom is addr with a prefix length, host bits kept.
func prefixFrom(addr netip.Addr, bits int) (netip.Prefix, error) {
	p := netip.PrefixFrom(addr, bits)
	if !p.IsValid() {
		return netip.Prefix{}, fmt.Errorf("%v/%d: bad prefix length", addr, bits)
	}
	return p, nil
}

// LeaseAddrs lists the addresses a node's status names for its VM: the
// lease it holds and every address its DHCP server offered the VM.
func LeaseAddrs(st node.Status) []string {
	var out []string
	if st.Lease.Addr != "" {
		out = append(out, st.Lease.Addr)
	}
	for _, o := range st.Lease.Offers {
		if !slices.Contains(out, o.Addr) {
			out = append(out, o.Addr)
		}
	}
	return out
}

// SharedAddrs returns the addresses that more than one VM had, each
// with the sorted names of those VMs; addrs lists each VM's addresses.
func SharedAddrs(addrs map[*VM][]string) map[string][]string {
	owners := make(map[string][]string)
	for vm, as := range addrs {
		for _, a := range as {
			if !slices.Contains(owners[a], vm.Name()) {
				owners[a] = append(owners[a], vm.Name())
			}
		}
	}
	for a, names := range owners {
		if len(names) < 2 {
			delete(owners, a)
			continue
		}
		slices.Sort(names)
	}
	return owners
}
