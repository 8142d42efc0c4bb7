package integration

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
)

// TestLiveMigrationKeepsTCP moves VM a's uplink from one NATed site to
// another while a TCP stream runs from a to b through ringnet: the stream
// must survive and resume, every byte delivered.
func TestLiveMigrationKeepsTCP(t *testing.T) {
	ctx := t.Context()
	bed, a, b := aDialsB(t, ctx, testbed.NATCone)
	site1 := a.Site()
	site2, err := bed.AddSite(ctx, "nat2", testbed.NATCone)
	if err != nil {
		t.Fatal(err)
	}
	// A JSON server, so that --get-server-output brings its intervals.
	srv, err := b.Start("iperf3", "-s", "-1", "-J", "-i", "0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop(9, time.Second)
	time.Sleep(300 * time.Millisecond)
	const seconds = 10
	client, err := a.Start("iperf3", "-c", vipB, "-J", "-t", strconv.Itoa(seconds), "-i", "0.1", "-b", "300M", "--get-server-output")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	moved := time.Now()
	if err := bed.MoveVM(ctx, a, site2); err != nil {
		t.Fatal(err)
	}
	t.Logf("moved a from %s to %s (new underlay address %s) %v into the stream", site1.Name(), site2.Name(), a.UnderlayIP(), 3*time.Second)
	if err := client.Wait(ctx); err != nil {
		t.Fatalf("iperf3 across the move: %v\n%s", err, client.Output())
	}
	out := []byte(client.Output())
	r, err := testbed.ParseIperf3(out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	gap, err := testbed.ServerGap(out)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stream across the move: sent %d, received %d bytes; longest gap %v (move at +3s, took %v)",
		r.SentBytes, r.Bytes, gap, time.Since(moved).Round(time.Millisecond))
	if r.Bytes == 0 || r.Bytes != r.SentBytes {
		t.Errorf("across the move %d bytes were sent and %d received; want all of them", r.SentBytes, r.Bytes)
	}
	// b must now reach a at its new site's public address.
	st, err := b.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Peers) != 1 || st.Peers[0].Endpoint != site2.WANIP().String()+":"+strconv.Itoa(node.DefaultDataPort) {
		t.Errorf("b's peers after the move: %+v; want a at %s", st.Peers, site2.WANIP())
	}
	if err := b.WaitReachable(ctx, vipA); err != nil {
		t.Errorf("b cannot reach a after the move: %v", err)
	}
}

// TestColdMigrationKeepsIdentity stops a's node and starts its state
// directory, copied, in a VM at another site: the node comes back with the
// same peer ID and virtual address, and b reaches it there.
func TestColdMigrationKeepsIdentity(t *testing.T) {
	ctx := t.Context()
	bed, a, b := aDialsB(t, ctx, testbed.NATCone)
	other, err := bed.AddSite(ctx, "other", testbed.NATCone)
	if err != nil {
		t.Fatal(err)
	}
	moved, err := bed.AddVM(ctx, other, "a2")
	if err != nil {
		t.Fatal(err)
	}
	cfg := a.NodeConfig()
	cfg.StateDir = "" // the moved VM's own directory, which gets the copy
	// The address comes back from the state directory's lease, not from
	// the config.
	subnet, err := cfg.Subnet()
	if err != nil {
		t.Fatal(err)
	}
	cfg.TAP.Address = ""
	cfg.Namespace.Subnet = subnet.String()
	id, err := a.PeerID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.StopNode(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The VM's disk moves: its state directory, identity and all.
	if err := os.CopyFS(moved.StateDir(), os.DirFS(a.StateDir())); err != nil {
		t.Fatal(err)
	}
	if err := moved.StartNode(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	st, err := waitLease(ctx, moved)
	if err != nil {
		t.Fatal(err)
	}
	if moved.StateDir() == a.StateDir() {
		t.Fatal("the moved VM shares a's state directory: the test would not test")
	}
	if st.PeerID != id || st.VirtualIP != vipA {
		t.Fatalf("after the move: peer ID %s, virtual IP %s; want %s and %s", st.PeerID, st.VirtualIP, id, vipA)
	}
	start := time.Now()
	if err := b.WaitReachable(ctx, vipA); err != nil {
		t.Fatalf("b cannot reach a at its new site: %v", err)
	}
	t.Logf("a restarted at %s with peer ID %s; b reached it %v later", other.Name(), id, time.Since(start).Round(time.Millisecond))
	r, err := b.Ping(ctx, vipA, "-c", "5", "-i", "0.1", "-W", "2")
	if err != nil || r.Received != 5 {
		t.Errorf("ping after the move: %+v, %v", r, err)
	}
}

// waitLease waits for vm's node to hold a lease, and returns its status.
func waitLease(ctx context.Context, vm *testbed.VM) (node.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for {
		st, err := vm.Status(ctx)
		if err == nil && st.Lease.Addr != "" {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("%s holds no lease: %v (last status error: %v)", vm.Name(), ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestClonedVMRefused starts a copy of a running node's disk (state
// directory and config) in a VM at another site, as when a VM image is
// cloned with its state: the copy, the newer node, finds the first one
// alive through their common peer, says why, and exits with an error;
// the first runs on.
func TestClonedVMRefused(t *testing.T) {
	ctx := t.Context()
	bed, a, b := aDialsB(t, ctx, testbed.NATNone)
	other, err := bed.AddSite(ctx, "other", testbed.NATNone)
	if err != nil {
		t.Fatal(err)
	}
	clone, err := bed.AddVM(ctx, other, "a2")
	if err != nil {
		t.Fatal(err)
	}
	cfg := a.NodeConfig()
	cfg.StateDir = "" // the clone's own directory, which gets the copy
	if err := copyStateDir(clone.StateDir(), a.StateDir()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// The clone may find the first before or after it answers status.
	startErr := clone.StartNode(ctx, cfg)
	waitFor2(t, "the clone to exit", 30*time.Second, func() bool { return !clone.NodeRunning() })
	took := time.Since(start)
	log, err := os.ReadFile(clone.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(log), "another live node holds this identity")
	if i < 0 {
		t.Fatalf("the clone exited (start: %v) without saying it is a clone:\n%s", startErr, log)
	}
	// It exited with status 3, the one a service manager must not
	// restart on, seen by StartNode if it went before it answered status.
	if startErr != nil {
		if !strings.Contains(startErr.Error(), "exit status 3") {
			t.Errorf("the clone did not exit with status 3: %v", startErr)
		}
	} else if _, err := clone.NodeExit(); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("the clone exited with %v, want exit status 3", err)
	}
	line := string(log[i:])
	line = line[:strings.IndexByte(line+"\n", '\n')]
	t.Logf("the clone exited %v after it started: %s", took.Round(100*time.Millisecond), line)
	if !a.NodeRunning() {
		t.Fatal("the first node stopped too")
	}
	// The clone's handshakes with b took over b's sessions for the peer
	// ID while it ran; b's link to the first handshakes again.
	gone := time.Now()
	if err := b.WaitReachable(ctx, vipA); err != nil {
		t.Fatalf("b cannot reach the first node after the clone left: %v", err)
	}
	t.Logf("b reached the first node again %v after the clone exited", time.Since(gone).Round(100*time.Millisecond))
	if r, err := b.Ping(ctx, vipA, "-c", "5", "-i", "0.1", "-W", "2"); err != nil || r.Received != 5 {
		t.Fatalf("b -> the first node after the clone left: %+v, %v", r, err)
	}
}

// copyStateDir copies a node's state directory, as a disk image would,
// leaving out its control socket.
func copyStateDir(dst, src string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		case !d.Type().IsRegular():
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o600)
	})
}
