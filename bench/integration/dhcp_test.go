package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
)

// Client scripts: they configure only the VM's own interface, inside its
// namespace, and log what they did to @LOG@ (filled in per test: dhclient
// gives its script an environment of its own); they never touch shared
// files such as /etc/resolv.conf.
const (
	udhcpcScript = `#!/bin/sh
case "$1" in
bound|renew)
	ip addr flush dev "$interface"
	ip addr add "$ip/$mask" dev "$interface"
	[ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
	echo "$1 $ip/$mask mtu=$mtu lease=$lease" >> "@LOG@" ;;
deconfig)
	ip addr flush dev "$interface"
	echo "$1" >> "@LOG@" ;;
esac
`
	dhclientScript = `#!/bin/sh
case "$reason" in
BOUND|RENEW|REBIND|REBOOT)
	ip addr flush dev "$interface"
	ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface"
	[ -n "$new_interface_mtu" ] && ip link set dev "$interface" mtu "$new_interface_mtu"
	echo "$reason $new_ip_address/$new_subnet_mask mtu=$new_interface_mtu lease=$new_dhcp_lease_time" >> "@LOG@" ;;
RELEASE|EXPIRE|STOP)
	ip addr flush dev "$interface"
	echo "$reason" >> "@LOG@" ;;
esac
`
)

// TestDHCPClientsGetTheAddress runs real DHCP clients in a VM whose node
// does not configure the TAP itself: each obtains the node's address with
// the overlay's MTU, reaches a peer with it, renews and releases.
func TestDHCPClientsGetTheAddress(t *testing.T) {
	for _, client := range []string{"udhcpc", "dhclient"} {
		t.Run(client, func(t *testing.T) {
			ctx := t.Context()
			// The VM configures its interface itself, with DHCP.
			a, b := startPair(t, ctx, testbed.NATNone, func(c *node.Config) {
				no := false
				c.TAP.ConfigureAddress = &no
			})
			dir := t.TempDir()
			logPath := filepath.Join(dir, "client.log")
			script := filepath.Join(dir, "script")
			body := udhcpcScript
			if client == "dhclient" {
				body = dhclientScript
			}
			body = strings.ReplaceAll(body, "@LOG@", logPath)
			if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
				t.Fatal(err)
			}
			var args []string
			switch client {
			case "udhcpc":
				// In the foreground, so that signals renew (USR1) and
				// release (USR2) the lease.
				args = []string{"udhcpc", "-f", "-i", testbed.TAPName, "-s", script, "-t", "5", "-T", "1", "-A", "1",
					"-p", filepath.Join(dir, "pid")}
			case "dhclient":
				args = []string{"dhclient", "-1", "-d", "-sf", script, "-lf", filepath.Join(dir, "leases"),
					"-pf", filepath.Join(dir, "pid"), testbed.TAPName}
			}
			proc, err := a.Start(args...)
			if err != nil {
				t.Fatal(err)
			}
			defer proc.Stop(syscall.SIGKILL, time.Second)
			// The scripts log the mask as their clients give it (/16 or
			// /255.255.0.0); the interface must end up with /16.
			want := vipA + "/16"
			waitLog(t, logPath, " "+vipA+"/")
			out, err := a.Output(ctx, "ip", "-4", "-o", "addr", "show", "dev", testbed.TAPName)
			if err != nil || !strings.Contains(string(out), want) {
				t.Fatalf("%s on %s: %s %v; want %s", client, testbed.TAPName, out, err, want)
			}
			mtu, err := a.Output(ctx, "cat", "/sys/class/net/"+testbed.TAPName+"/mtu")
			if err != nil || strings.TrimSpace(string(mtu)) != fmt.Sprint(node.TAPMTU(node.DefaultUnderlayMTU)) {
				t.Errorf("MTU after DHCP: %q %v, want %d", mtu, err, node.TAPMTU(node.DefaultUnderlayMTU))
			}
			if err := a.WaitReachable(ctx, vipB); err != nil {
				t.Fatalf("with its DHCP address, a cannot reach b: %v", err)
			}
			if err := b.WaitReachable(ctx, vipA); err != nil {
				t.Fatalf("b cannot reach a at its DHCP address: %v", err)
			}

			// Renew, then release.
			switch client {
			case "udhcpc":
				proc.Signal(syscall.SIGUSR1)
				waitLog(t, logPath, "renew "+vipA+"/")
				proc.Signal(syscall.SIGUSR2)
			case "dhclient":
				proc.Stop(syscall.SIGTERM, 2*time.Second)
				// A second run renews the lease it recorded (init-reboot)...
				if err := a.Command(ctx, "dhclient", "-1", "-sf", script, "-lf", filepath.Join(dir, "leases"),
					"-pf", filepath.Join(dir, "pid"), testbed.TAPName).Run(); err != nil {
					t.Fatalf("dhclient renewal: %v", err)
				}
				waitLog(t, logPath, "REBOOT "+vipA+"/")
				// ...and -r releases it.
				if err := a.Command(ctx, "dhclient", "-r", "-sf", script, "-lf", filepath.Join(dir, "leases"),
					"-pf", filepath.Join(dir, "pid"), testbed.TAPName).Run(); err != nil {
					t.Fatalf("dhclient release: %v", err)
				}
			}
			waitFor(t, "the node to count the release", func() bool {
				st, err := a.Status(ctx)
				return err == nil && st.TAP.Counters["dhcp_releases"] >= 1
			})
			st, err := a.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: node's DHCP counters: discovers %d, offers %d, requests %d, acks %d, naks %d, releases %d",
				client, st.TAP.Counters["dhcp_discovers"], st.TAP.Counters["dhcp_offers"], st.TAP.Counters["dhcp_requests"],
				st.TAP.Counters["dhcp_acks"], st.TAP.Counters["dhcp_naks"], st.TAP.Counters["dhcp_releases"])
			if st.TAP.Counters["dhcp_acks"] < 2 {
				t.Errorf("acks = %d, want the first lease and the renewal", st.TAP.Counters["dhcp_acks"])
			}
		})
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
