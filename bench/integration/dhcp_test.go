package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
)

// The clients' hook scripts (testbed.WriteDHCPScript) configure only the
// VM's own interface, inside its namespace, and log what they did; they
// never touch shared files such as /etc/resolv.conf. dhcpcd also runs
// over private copies of its state directories (testbed.PrivateDhcpcd).

// TestDHCPClientsGetTheAddress runs real DHCP clients in a VM whose node
// does not configure the TAP itself: each obtains the node's address with
// the overlay's MTU, reaches a peer with it, renews and releases. In the
// "picked" case the node has no tap.address, only namespace.subnet: it
// picks a free address, which the client gets.
func TestDHCPClientsGetTheAddress(t *testing.T) {
	for _, tc := range []struct {
		name, client string
		pick         bool
	}{
		{"udhcpc", testbed.Udhcpc, false},
		{"dhclient", testbed.Dhclient, false},
		{"dhcpcd", testbed.Dhcpcd, false},
		{"udhcpc-picked", testbed.Udhcpc, true},
	} {
		t.Run(tc.name, func(t *testing.T) { dhcpClient(t, tc.client, tc.pick) })
	}
}

func dhcpClient(t *testing.T, client string, pick bool) {
	ctx := t.Context()
	const subnet = "10.128.0.0/16"
	// The VM configures its interface itself, with DHCP.
	a, b := startPair(t, ctx, testbed.NATNone, func(c *node.Config) {
		no := false
		c.TAP.ConfigureAddress = &no
		if pick {
			c.TAP.Address = ""
			c.Namespace.Subnet = subnet
		}
	})
	st, err := a.WaitLease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vip := st.Lease.Addr
	switch {
	case !pick && vip != vipA:
		t.Fatalf("the node leased %s, want its tap.address %s", vip, vipA)
	case pick && (!netip.MustParsePrefix(subnet).Contains(netip.MustParseAddr(vip)) || vip == vipB):
		t.Fatalf("the node picked %s: outside %s, or b's", vip, subnet)
	case pick:
		t.Logf("the node picked %s in %s (%d claims)", vip, subnet, st.Lease.Claims)
	}

	dir := t.TempDir()
	logPath := filepath.Join(dir, "client.log")
	script := filepath.Join(dir, "script")
	if err := testbed.WriteDHCPScript(client, script, logPath); err != nil {
		t.Fatal(err)
	}
	var args []string
	switch client {
	case testbed.Udhcpc:
		// In the foreground, so that signals renew (USR1) and
		// release (USR2) the lease.
		args = []string{"udhcpc", "-f", "-i", testbed.TAPName, "-s", script, "-t", "5", "-T", "1", "-A", "1",
			"-p", filepath.Join(dir, "pid")}
	case testbed.Dhclient:
		args = []string{"dhclient", "-1", "-d", "-sf", script, "-lf", filepath.Join(dir, "leases"),
			"-pf", filepath.Join(dir, "pid"), testbed.TAPName}
	case testbed.Dhcpcd:
		// In the foreground (-B), IPv4 only, no IPv4LL fallback; with
		// its default ARP probe of the offered address, which the
		// gateway must leave unanswered.
		args = testbed.PrivateDhcpcd("-B", "-4", "-L", "-f", "/dev/null", "-c", script,
			"-j", filepath.Join(dir, "dhcpcd.log"), "-o", "interface_mtu", "-t", "30", testbed.TAPName)
	}
	proc, err := a.Start(args...)
	if err != nil {
		t.Fatal(err)
	}
	defer proc.Stop(syscall.SIGKILL, time.Second)
	defer func() {
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			own, _ := os.ReadFile(filepath.Join(dir, "dhcpcd.log"))
			t.Logf("%s output:\n%s\nscript log:\n%s\n%s", client, proc.Output(), log, own)
		}
	}()
	start := time.Now()
	// The scripts log the mask as their clients give it (/16 or
	// /255.255.0.0); the interface must end up with /16.
	waitLog(t, logPath, " "+vip+"/")
	t.Logf("%s bound %s %v after it started", client, vip, time.Since(start).Round(time.Millisecond))
	addrs, err := a.IfaceAddrs(ctx, testbed.TAPName)
	if want := netip.MustParsePrefix(vip + "/16"); err != nil || len(addrs) != 1 || addrs[0] != want {
		t.Fatalf("%s on %s: %v %v; want %v", client, testbed.TAPName, addrs, err, want)
	}
	mtu, err := a.Output(ctx, "cat", "/sys/class/net/"+testbed.TAPName+"/mtu")
	if err != nil || strings.TrimSpace(string(mtu)) != fmt.Sprint(node.TAPMTU(node.DefaultUnderlayMTU)) {
		t.Errorf("MTU after DHCP: %q %v, want %d", mtu, err, node.TAPMTU(node.DefaultUnderlayMTU))
	}
	if err := a.WaitReachable(ctx, vipB); err != nil {
		t.Fatalf("with its DHCP address, a cannot reach b: %v", err)
	}
	if err := b.WaitReachable(ctx, vip); err != nil {
		t.Fatalf("b cannot reach a at its DHCP address: %v", err)
	}
	// The client holds what the node's status says it leased, and the
	// node never offered anything else.
	if st, err = a.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if st.Lease.Addr != vip || st.VirtualIP != vip {
		t.Errorf("status: lease.addr %q, virtual_ip %q; the client has %s", st.Lease.Addr, st.VirtualIP, vip)
	}
	for _, o := range st.Lease.Offers {
		if o.Addr != vip {
			t.Errorf("the node offered %s (%v to %v), not its lease %s", o.Addr, o.First, o.Last, vip)
		}
	}

	// Renew, then release.
	switch client {
	case testbed.Udhcpc:
		proc.Signal(syscall.SIGUSR1)
		waitLog(t, logPath, "renew "+vip+"/")
		proc.Signal(syscall.SIGUSR2)
	case testbed.Dhclient:
		proc.Stop(syscall.SIGTERM, 2*time.Second)
		// A second run renews the lease it recorded (init-reboot)...
		if err := a.Command(ctx, "dhclient", "-1", "-sf", script, "-lf", filepath.Join(dir, "leases"),
			"-pf", filepath.Join(dir, "pid"), testbed.TAPName).Run(); err != nil {
			t.Fatalf("dhclient renewal: %v", err)
		}
		waitLog(t, logPath, "REBOOT "+vip+"/")
		// ...and -r releases it.
		if err := a.Command(ctx, "dhclient", "-r", "-sf", script, "-lf", filepath.Join(dir, "leases"),
			"-pf", filepath.Join(dir, "pid"), testbed.TAPName).Run(); err != nil {
			t.Fatalf("dhclient release: %v", err)
		}
	case testbed.Dhcpcd:
		// The control commands reach the daemon through its socket in
		// its private /run/dhcpcd: -N renews, -k releases (and, the
		// interface being its only one, makes it exit).
		if out, err := a.Command(ctx, testbed.DhcpcdControl(proc.Pid(), "-4", "-N", testbed.TAPName)...).CombinedOutput(); err != nil {
			t.Fatalf("dhcpcd -N: %v: %s", err, out)
		}
		waitLog(t, logPath, "RENEW "+vip+"/")
		if out, err := a.Command(ctx, testbed.DhcpcdControl(proc.Pid(), "-4", "-k", testbed.TAPName)...).CombinedOutput(); err != nil {
			t.Fatalf("dhcpcd -k: %v: %s", err, out)
		}
		// dhcpcd sends the RELEASE, removes the address, then runs the
		// script with STOP.
		waitLog(t, logPath, "STOP")
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := proc.Wait(wctx)
		cancel()
		if err != nil {
			t.Errorf("dhcpcd after -k: %v", err)
		}
		if addrs, err := a.IfaceAddrs(ctx, testbed.TAPName); err != nil || len(addrs) != 0 {
			t.Errorf("after the release, %s has %v %v; want no address", testbed.TAPName, addrs, err)
		}
	}
	waitFor(t, "the node to count the release", func() bool {
		st, err := a.Status(ctx)
		return err == nil && st.TAP.Counters["dhcp_releases"] >= 1
	})
	if st, err = a.Status(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: node's DHCP counters: discovers %d, offers %d, requests %d, acks %d, naks %d, releases %d",
		client, st.TAP.Counters["dhcp_discovers"], st.TAP.Counters["dhcp_offers"], st.TAP.Counters["dhcp_requests"],
		st.TAP.Counters["dhcp_acks"], st.TAP.Counters["dhcp_naks"], st.TAP.Counters["dhcp_releases"])
	if st.TAP.Counters["dhcp_acks"] < 2 {
		t.Errorf("acks = %d, want the first lease and the renewal", st.TAP.Counters["dhcp_acks"])
	}
	// A VM's release leaves the node's lease alone: the address is the
	// VM's for as long as its node runs.
	if st.Lease.Addr != vip {
		t.Errorf("after the release, the node's lease is %q, want %s", st.Lease.Addr, vip)
	}
}

// waitLog waits until the client script's log has a line containing want.
func waitLog(t *testing.T, path, want string) {
	t.Helper()
	waitFor(t, "client log line "+want, func() bool {
		b, _ := os.ReadFile(path)
		return strings.Contains(string(b), want)
	})
}

// waitFor polls cond for up to 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
