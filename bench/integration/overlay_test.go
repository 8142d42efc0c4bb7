package integration

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
)

func TestPingAndTCPThroughOverlay(t *testing.T) {
	p := newPair(t)
	p.start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
	defer cancel()

	for _, c := range []struct {
		from *testbed.VM
		to   string
	}{{p.a, vipB}, {p.b, vipA}} {
		r, err := c.from.Ping(ctx, c.to, "-c", "3", "-i", "0.2", "-W", "2")
		if err != nil {
			t.Fatal(err)
		}
		if r.Received != 3 {
			t.Errorf("ping %s -> %s: %d of %d replies", c.from.Name(), c.to, r.Received, r.Transmitted)
		}
		t.Logf("ping %s -> %s: %d/%d, avg %.3f ms", c.from.Name(), c.to, r.Received, r.Transmitted, r.AvgRTTMs)
	}
	if r := iperf(t, ctx, p.a, p.b, vipB, "-t", "3"); r.Bytes == 0 {
		t.Error("iperf3 through the overlay moved no data")
	}

	// Each node reports itself and its static peer.
	for _, c := range []struct{ vm, other *testbed.VM }{{p.a, p.b}, {p.b, p.a}} {
		st, err := c.vm.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		id, err := c.vm.PeerID(ctx)
		if err != nil {
			t.Fatal(err)
		}
		otherID, err := c.other.PeerID(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.PeerID != id {
			t.Errorf("%s: status peer_id %s, want %s", c.vm.Name(), st.PeerID, id)
		}
		if !slices.ContainsFunc(st.Peers, func(ps node.PeerStatus) bool { return ps.PeerID == otherID }) {
			t.Errorf("%s: status lists peers %+v, want %s among them", c.vm.Name(), st.Peers, otherID)
		}
		// On a machine of two cores or fewer a node runs its Go code
		// on one thread, unless the environment says otherwise.
		if os.Getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) <= 2 && st.GOMAXPROCS != 1 {
			t.Errorf("%s: gomaxprocs %d on a machine where this test has %d; want 1", c.vm.Name(), st.GOMAXPROCS, runtime.GOMAXPROCS(0))
		}
	}
}

func TestOversizedDontFragmentPing(t *testing.T) {
	p := newPair(t)
	p.start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
	defer cancel()

	// A VM that ignores the DHCP MTU option keeps 1500 on its interface.
	for _, vm := range []*testbed.VM{p.a, p.b} {
		if err := vm.Exec(ctx, "ip", "link", "set", testbed.TAPName, "mtu", "1500"); err != nil {
			t.Fatal(err)
		}
	}
	// 1472 bytes of ICMP payload make a 1500-byte packet, which does not fit
	// in the overlay over a 1500-byte underlay. The node must answer
	// "fragmentation needed"; from the second ping on, the VM's kernel knows
	// the path MTU and refuses locally.
	out, _ := p.a.Command(ctx, "ping", "-M", "do", "-s", "1472", "-c", "3", "-i", "0.3", "-W", "1", vipB).CombinedOutput()
	t.Logf("ping -M do -s 1472:\n%s", out)
	fragNeeded := regexp.MustCompile(`(?i)frag(mentation)? needed|message too long, mtu=\d+`)
	if !fragNeeded.Match(out) {
		t.Errorf("an oversized don't-fragment ping got no \"fragmentation needed\" (nor a local \"message too long\") back")
	}
	if m := regexp.MustCompile(`mtu ?= ?(\d+)`).FindSubmatch(out); m != nil {
		t.Logf("path MTU reported: %s", m[1])
	}

	// With the default MSS (from MTU 1500), TCP still gets its data through.
	if r := iperf(t, ctx, p.a, p.b, vipB, "-t", "3"); r.Bytes == 0 {
		t.Error("bulk TCP transfer with MTU 1500 on the VMs received no data")
	}
}

func TestRestartKeepsPeerID(t *testing.T) {
	p := newPair(t)
	ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
	defer cancel()
	want, err := p.a.PeerID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.a.StartNode(ctx, nodeConfig(vipA)); err != nil {
		t.Fatal(err)
	}
	checkID := func(when string) {
		t.Helper()
		st, err := p.a.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.PeerID != want {
			t.Errorf("%s: status peer_id %s, want %s (from ringnet id)", when, st.PeerID, want)
		}
	}
	checkID("first start")
	if err := p.a.StopNode(syscall.SIGTERM); err != nil {
		t.Errorf("SIGTERM: %v", err)
	}
	if err := p.a.Exec(ctx, "ip", "link", "show", testbed.TAPName); err == nil {
		t.Errorf("TAP %s still exists after the node stopped", testbed.TAPName)
	}
	if err := p.a.RestartNode(ctx); err != nil {
		t.Fatal(err)
	}
	checkID("after restart")
	if got, err := p.a.PeerID(ctx); err != nil || got != want {
		t.Errorf("ringnet id after restart: %s, %v; want %s", got, err, want)
	}
}

func TestBadConfigRefused(t *testing.T) {
	testbed.RequireRoot(t)
	dir := t.TempDir()
	tests := []struct {
		field, config string
		closed        bool // leave the ring and namespace closed
	}{
		{"ring.root", `[tap]
address = "10.128.0.1/16"
`, true},
		{"tap.address", `[tap]
address = "banana"
`, false},
		{"log_level", `log_level = "loud"
[tap]
address = "10.128.0.1/16"
`, false},
		{"tap.underlay_mtu", `[tap]
address = "10.128.0.1/16"
underlay_mtu = 100
`, false},
		{"listen.data", `[tap]
address = "10.128.0.1/16"
[listen]
data = "nowhere"
`, false},
		{"peer[0].id", `[tap]
address = "10.128.0.1/16"
[[peer]]
id = "not-a-peer-id"
addrs = ["/ip4/100.96.1.10/tcp/4150"]
`, false},
		// A syntax error names no field, but its line (the parser's: the
		// newline that ends the broken table header starts line 3).
		{"config line 3", `[tap
address = "10.128.0.1/16"
`, true},
	}
	// A bad config must be refused before the node touches any device;
	// run it in a namespace of its own anyway.
	bed := testbed.NewT(t, testbed.Options{RingnetPath: ringnetBin})
	site, err := bed.AddSite(t.Context(), "dc", testbed.NATNone)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := bed.AddVM(t.Context(), site, "vm")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			path := filepath.Join(dir, strings.NewReplacer("[", "_", "]", "_").Replace(tt.field)+".toml")
			config := "state_dir = " + strconv.Quote(filepath.Join(dir, "state")) + "\n"
			if !tt.closed {
				config += "ring = { open = true }\nnamespace = { open = true }\n"
			}
			config += tt.config
			if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			out, err := vm.Command(ctx, ringnetBin, "up", "--config", path).CombinedOutput()
			var exitErr *exec.ExitError
			if !errors.As(err, &exitErr) || exitErr.ExitCode() != 2 {
				t.Fatalf("ringnet up with a bad %s: %v, want exit status 2; output:\n%s", tt.field, err, out)
			}
			if !strings.Contains(string(out), tt.field) {
				t.Errorf("ringnet up with a bad %s said %q, which does not name the field", tt.field, out)
			}
		})
	}
}

func TestKilledNodeLeavesNoTAP(t *testing.T) {
	p := newPair(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := p.a.StartNode(ctx, nodeConfig(vipA)); err != nil {
		t.Fatal(err)
	}
	if err := p.a.Exec(ctx, "ip", "link", "show", testbed.TAPName); err != nil {
		t.Fatalf("running node has no TAP: %v", err)
	}
	if err := p.a.Kill(); err != nil {
		t.Fatal(err)
	}
	// The kernel removes a non-persistent TAP when its last descriptor
	// closes, which the process's exit does; give it a moment.
	deadline := time.Now().Add(2 * time.Second)
	for p.a.Exec(ctx, "ip", "link", "show", testbed.TAPName) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("TAP %s still exists 2 s after SIGKILL", testbed.TAPName)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestTCPUnderLoss(t *testing.T) {
	p := newPair(t)
	p.start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Second)
	defer cancel()

	if err := p.bed.SetLoss(ctx, p.a, 0.02); err != nil {
		t.Fatal(err)
	}
	// Every byte must arrive, in order: the receiver's SHA-256 must match.
	transfer(t, ctx, p.a, p.b, vipB, randomFile(t, t.TempDir(), "lossy", 20<<20))
	dropped, total, share, err := p.bed.MeasuredLoss(ctx, p.a)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("underlay loss measured on %s's uplink: %d of %d packets dropped (%.2f%%)", p.a.Name(), dropped, total, 100*share)
	if share < 0.01 || share > 0.03 {
		t.Errorf("measured loss %.4f is outside 1%%..3%%: the test did not test 2%% loss", share)
	}
}
