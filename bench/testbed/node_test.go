package testbed

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/ringnet/ringnet/node"
)

// TestNodeLifecycle drives StartNode, Status, PeerID, RestartNode, StopNode
// and Kill with the real ringnet binary.
func TestNodeLifecycle(t *testing.T) {
	RequireRoot(t)
	bin := filepath.Join(t.TempDir(), "ringnet")
	build := exec.Command("go", "build", "-o", bin, "github.com/ringnet/ringnet/cmd/ringnet")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build ringnet: %v\n%s", err, out)
	}
	bed := NewT(t, Options{RingnetPath: bin})
	ctx := t.Context()
	a := mustVM(t, bed, mustSite(t, bed, "east", NATNone), "a")
	b := mustVM(t, bed, mustSite(t, bed, "west", NATNone), "b")
	peerA, err := a.PeerEntry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	peerB, err := b.PeerEntry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.StartNode(ctx, node.Config{TAP: node.TAPConfig{Address: "10.128.0.1/16"}, Peers: []node.Peer{peerB}}); err != nil {
		t.Fatal(err)
	}
	if err := b.StartNode(ctx, node.Config{TAP: node.TAPConfig{Address: "10.128.0.2/16"}, Peers: []node.Peer{peerA}}); err != nil {
		t.Fatal(err)
	}
	if err := a.StartNode(ctx, a.NodeConfig()); err == nil {
		t.Error("a second StartNode on a running node succeeded")
	}
	if err := a.WaitReachable(ctx, "10.128.0.2"); err != nil {
		t.Fatal(err)
	}
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.PeerID != peerA.ID || len(st.Peers) != 1 || st.Peers[0].PeerID != peerB.ID {
		t.Errorf("status of a: %+v; want peer ID %s with peer %s", st, peerA.ID, peerB.ID)
	}
	if err := a.RestartNode(ctx); err != nil {
		t.Fatal(err)
	}
	if id, err := a.PeerID(ctx); err != nil || id != peerA.ID {
		t.Errorf("peer ID after restart: %s, %v; want %s", id, err, peerA.ID)
	}
	if err := a.StopNode(syscall.SIGTERM); err != nil {
		t.Errorf("stop with SIGTERM: %v", err)
	}
	if a.NodeRunning() {
		t.Error("node still running after StopNode")
	}
	if err := a.Exec(ctx, "ip", "link", "show", TAPName); err == nil {
		t.Error("device still there after the node stopped")
	}
	if err := b.Kill(); err != nil {
		t.Errorf("kill: %v", err)
	}
	if err := b.Kill(); err == nil {
		t.Error("killing a stopped node succeeded")
	}
}
