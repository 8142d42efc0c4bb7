package node

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringnet/ringnet/overlay"
	"github.com/ringnet/ringnet/tap"
)

// vmNode is a node running over an in-memory device; vm is the VM's end.
type vmNode struct {
	*Node
	vm  *tap.Pipe
	mac net.HardwareAddr
	dir string
}

func startNode(t *testing.T, ctx context.Context, addr string, peers ...*vmNode) *vmNode {
	t.Helper()
	return startNodeIn(t, ctx, t.TempDir(), addr, peers...)
}

// startNodeIn is startNode with the state directory dir.
func startNodeIn(t *testing.T, ctx context.Context, dir, addr string, peers ...*vmNode) *vmNode {
	t.Helper()
	cfg := &Config{
		StateDir: dir,
		TAP:      TAPConfig{Address: addr},
		Listen: Listen{
			Control: []string{"/ip4/127.0.0.1/tcp/0"},
			Data:    "127.0.0.1:0",
		},
	}
	for _, p := range peers {
		var addrs []string
		for _, a := range p.Overlay().Host().Addrs() {
			addrs = append(addrs, a.String())
		}
		cfg.Peers = append(cfg.Peers, Peer{ID: p.ID().String(), Addrs: addrs})
	}
	cfg.Namespace.Settle = "50ms"
	cfg.Ring.Open, cfg.Namespace.Open = true, true
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	vm, dev := tap.NewPipe()
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, byte(len(peers) + 1)}
	var logTo io.Writer = io.Discard
	if testing.Verbose() {
		logTo = t.Output()
	}
	log := slog.New(slog.NewTextHandler(logTo, &slog.HandlerOptions{Level: slog.LevelDebug}))
	n, err := New(ctx, cfg, log, WithDevice(dev, mac))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Wait)
	// The VM's address is usable once the node has won its lease.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if l, ok := n.Lease(); ok {
			if want := netip.MustParsePrefix(addr).Addr(); l.IP != want {
				t.Fatalf("lease on %v, want the configured %v", l.IP, want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no lease within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &vmNode{Node: n, vm: vm, mac: mac, dir: dir}
}

// icmpEcho builds an Ethernet frame carrying an ICMP echo request.
func icmpEcho(srcMAC, dstMAC net.HardwareAddr, src, dst string) []byte {
	f := make([]byte, 14+20+8+4)
	copy(f[0:6], dstMAC)
	copy(f[6:12], srcMAC)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	ip[8], ip[9] = 64, 1
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], ^sum16(ip[:20]))
	icmp := ip[20:]
	icmp[0] = 8
	copy(icmp[8:], "ping")
	binary.BigEndian.PutUint16(icmp[2:], ^sum16(icmp))
	return f
}

func sum16(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

func readFrame(t *testing.T, p *tap.Pipe) []byte {
	t.Helper()
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, 2048)
		n, err := p.ReadFrame(buf)
		if err == nil {
			got <- buf[:n]
		}
	}()
	select {
	case f := <-got:
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("no frame reached the VM")
		return nil
	}
}

// TestTwoNodesCarryAPing runs two whole nodes in process, each over an
// in-memory TAP: a ping frame from one VM arrives at the other VM intact
// and addressed to it.
func TestTwoNodesCarryAPing(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := startNode(t, ctx, "10.128.0.1/16")
	b := startNode(t, ctx, "10.128.0.2/16", a)
	deadline := time.Now().Add(10 * time.Second)
	for !a.Overlay().Holds(netip.MustParseAddr("10.128.0.2")) || b.Status().Peers[0].Path != "udp" {
		if time.Now().After(deadline) {
			t.Fatalf("link did not come up: %+v", b.Status().Peers)
		}
		time.Sleep(20 * time.Millisecond)
	}
	gw := a.Status().TAP.GatewayMAC
	gwMAC, _ := net.ParseMAC(gw)
	frame := icmpEcho(a.mac, gwMAC, "10.128.0.1", "10.128.0.2")
	if err := a.vm.WriteFrame(frame); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			for _, n := range []*vmNode{a, b} {
				st := n.Status()
				t.Logf("%s: drops %v\n  lease counters %v\n  tap counters %v\n  peers %+v", st.VirtualIP, st.Drops, st.Lease.Counters, st.TAP.Counters, st.Peers)
			}
		}
	}()
	got := readFrame(t, b.vm)
	if string(got[0:6]) != string(b.mac) {
		t.Errorf("frame to %x, want the VM's MAC %x", got[0:6], b.mac)
	}
	if string(got[14:]) != string(frame[14:]) {
		t.Errorf("packet changed in transit:\n got %x\nwant %x", got[14:], frame[14:])
	}
	st := b.Status()
	if st.Peers[0].RxPackets != 1 || st.Peers[0].PeerID != a.ID().String() {
		t.Errorf("status of b: %+v", st.Peers[0])
	}
	// a sees its own lease and b's: b's record is on both nodes, the
	// only two replicas.
	ls := a.Leases(ctx)
	if len(ls) != 2 || ls[0].Addr != "10.128.0.1" || ls[0].Seen != "own" ||
		ls[1].Addr != "10.128.0.2" || ls[1].Holder != b.ID().String() || ls[1].Seen != "replica" {
		t.Errorf("a's leases: %+v", ls)
	}
}

// TestSavedLeaseResumedOnlyByItsHolder: a node restarted on its state
// directory puts its saved lease back to use without a claim; one started
// on a copy of the directory with a new identity (a clone made as the
// clone check tells) claims instead.
func TestSavedLeaseResumedOnlyByItsHolder(t *testing.T) {
	dir := t.TempDir()
	run := func() Status {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		n := startNodeIn(t, ctx, dir, "10.128.0.1/16")
		st := n.Status()
		cancel()
		n.Wait()
		return st
	}
	if st := run(); st.Lease.Claims != 1 {
		t.Fatalf("first start: %d claims, want 1", st.Lease.Claims)
	}
	if st := run(); st.Lease.Claims != 0 {
		t.Errorf("restart: %d claims, want the saved lease resumed without one", st.Lease.Claims)
	}
	if err := os.Remove(filepath.Join(dir, overlay.IdentityFile)); err != nil {
		t.Fatal(err)
	}
	if st := run(); st.Lease.Claims != 1 {
		t.Errorf("new identity on the old directory: %d claims, want 1 (another node's saved lease is not resumed)", st.Lease.Claims)
	}
}

func TestSecondNodeOnSameStateDirIsRefused(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := startNode(t, ctx, "10.128.0.1/16")
	cfg := &Config{StateDir: a.dir, TAP: TAPConfig{Address: "10.128.0.3/16"},
		Ring: RingConfig{Open: true}, Namespace: NamespaceConfig{Open: true},
		Listen: Listen{Control: []string{"/ip4/127.0.0.1/tcp/0"}, Data: "127.0.0.1:0"}}
	cfg.setDefaults()
	_, dev := tap.NewPipe()
	_, err := New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), WithDevice(dev, nil))
	if err == nil {
		t.Fatal("a second node started on a state directory in use")
	}
	if id, _ := peer.Decode(a.ID().String()); id != a.ID() {
		t.Fatal("peer ID changed")
	}
}

func TestControlSocketServesStatus(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := startNode(t, ctx, "10.128.0.1/16")
	st, err := FetchStatus(ctx, a.dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.PeerID != a.ID().String() || st.VirtualIP != "10.128.0.1" || st.Subnet != "10.128.0.0/16" || st.TAP.MTU != 1440 {
		t.Fatalf("status: %+v", st)
	}
	if st.Memory.HeapLive == 0 || st.Memory.Goroutines == 0 {
		t.Errorf("status without memory: %+v", st.Memory)
	}
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", ControlSocketIn(a.dir))
		},
	}}
	for path, want := range map[string]int{"heap": http.StatusOK, "heap?gc=1": http.StatusOK, "goroutine": http.StatusOK, "nonesuch": http.StatusNotFound} {
		resp, err := client.Get("http://ringnet/debug/pprof/" + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s profile: %s", path, resp.Status)
		}
		if want == http.StatusOK && !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
			t.Errorf("%s profile is not a gzipped pprof profile: %.16x", path, b)
		}
	}
	cancel()
	a.Wait()
	if _, err := FetchStatus(context.Background(), a.dir); err == nil {
		t.Fatal("control socket still answers after shutdown")
	}
}
