// Package integration runs ringnet nodes in network namespaces (see
// bench/testbed) and checks what a VM sees through the overlay. The tests
// need root; ./scripts/test runs them.
package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
)

// The programs TestMain builds once for all tests: ringnet, and the
// helpers the tests run inside VMs (bench/cmd/xfer, bench/cmd/udpgso).
var ringnetBin, xferBin, udpgsoBin string

// workDir is TestMain's scratch directory, removed when the tests end.
var workDir string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "ringnet-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	workDir = dir
	xferBin = filepath.Join(dir, "xfer")
	udpgsoBin = filepath.Join(dir, "udpgso")
	pkgs := []string{"github.com/ringnet/ringnet/bench/cmd/xfer", "github.com/ringnet/ringnet/bench/cmd/udpgso"}
	// RINGNET_BIN runs the tests against a binary built elsewhere, for
	// example with -race.
	if ringnetBin = os.Getenv("RINGNET_BIN"); ringnetBin == "" {
		ringnetBin = filepath.Join(dir, "ringnet")
		pkgs = append(pkgs, "github.com/ringnet/ringnet/cmd/ringnet")
	}
	// Without -race: the race detector would slow the data path down many
	// times over and turn timing-sensitive checks into noise. With several
	// packages, -o names a directory: each binary is named after its
	// package.
	build := exec.Command("go", append([]string{"build", "-o", dir + string(filepath.Separator)}, pkgs...)...)
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // as shipped: see README
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build %v: %v\n%s", pkgs, err, out)
		return 1
	}
	return m.Run()
}

// Virtual addresses of the two nodes of a pair.
const (
	vipA = "10.128.0.1"
	vipB = "10.128.0.2"
)

// pair is two VMs at two public sites whose nodes have each other as static
// peers.
type pair struct {
	bed  *testbed.Bed
	a, b *testbed.VM
}

// newPair builds the bed and its two VMs, without nodes.
func newPair(t *testing.T) *pair {
	t.Helper()
	ctx := t.Context()
	bed := testbed.NewT(t, testbed.Options{RingnetPath: ringnetBin})
	p := &pair{bed: bed}
	for i, name := range []string{"a", "b"} {
		site, err := bed.AddSite(ctx, "site"+name, testbed.NATNone)
		if err != nil {
			t.Fatal(err)
		}
		vm, err := bed.AddVM(ctx, site, "vm"+name)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			p.a = vm
		} else {
			p.b = vm
		}
	}
	return p
}

// start starts both nodes and waits until a reaches b through the overlay.
func (p *pair) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err := testbed.StartMesh(ctx, node.Config{LogLevel: "debug"}, []*testbed.VM{p.a, p.b}, []string{vipA + "/16", vipB + "/16"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("overlay up: %s reached %s through ringnet %v after the first node started", p.a.Name(), vipB, time.Since(start).Round(time.Millisecond))
}

// nodeConfig is the config of a node without peers.
func nodeConfig(vip string) node.Config {
	return node.Config{LogLevel: "debug", TAP: node.TAPConfig{Address: vip + "/16"}}
}

// iperf runs a TCP transfer from client to a one-off iperf3 server on
// server, at addr, and returns what the server received.
func iperf(t *testing.T, ctx context.Context, client, server *testbed.VM, addr string, args ...string) testbed.IperfResult {
	t.Helper()
	srv, err := server.StartIperf3Server(true)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop(syscall.SIGTERM, time.Second)
	r, err := client.Iperf3(ctx, addr, args...)
	if err != nil {
		t.Fatalf("iperf3 %s -> %s: %v\nserver: %s", client.Name(), addr, err, srv.Output())
	}
	t.Logf("iperf3 %s -> %s %v: %d bytes in %.1f s, %.3f Gbit/s, %d retransmits",
		client.Name(), addr, args, r.Bytes, r.Seconds, r.BitsPerSecond/1e9, r.Retransmits)
	return r
}

// aDialsB builds a bed with VM a at a site of kind aNAT and VM b at a
// public site, starts b's node and then a's, with b as a's static peer (b
// cannot dial a behind a NAT), and returns once a reaches b through the
// overlay.
func aDialsB(t *testing.T, ctx context.Context, aNAT testbed.NATKind) (bed *testbed.Bed, a, b *testbed.VM) {
	t.Helper()
	bed, a, b = startPairIn(t, ctx, aNAT, nil)
	if err := a.WaitReachable(ctx, vipB); err != nil {
		t.Fatal(err)
	}
	return bed, a, b
}

// startPair is aDialsB without the wait, with a's config changed by
// change (nil: as it is).
func startPair(t *testing.T, ctx context.Context, aNAT testbed.NATKind, change func(*node.Config)) (a, b *testbed.VM) {
	t.Helper()
	_, a, b = startPairIn(t, ctx, aNAT, change)
	return a, b
}

func startPairIn(t *testing.T, ctx context.Context, aNAT testbed.NATKind, change func(*node.Config)) (bed *testbed.Bed, a, b *testbed.VM) {
	t.Helper()
	bed = testbed.NewT(t, testbed.Options{RingnetPath: ringnetBin})
	aSite, err := bed.AddSite(ctx, "asite", aNAT)
	if err != nil {
		t.Fatal(err)
	}
	bSite, err := bed.AddSite(ctx, "bsite", testbed.NATNone)
	if err != nil {
		t.Fatal(err)
	}
	if a, err = bed.AddVM(ctx, aSite, "a"); err != nil {
		t.Fatal(err)
	}
	if b, err = bed.AddVM(ctx, bSite, "b"); err != nil {
		t.Fatal(err)
	}
	peerB, err := b.PeerEntry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.StartNode(ctx, nodeConfig(vipB)); err != nil {
		t.Fatal(err)
	}
	cfg := nodeConfig(vipA)
	cfg.Peers = []node.Peer{peerB}
	if change != nil {
		change(&cfg)
	}
	if err := a.StartNode(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	return bed, a, b
}
