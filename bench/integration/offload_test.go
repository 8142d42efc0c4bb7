package integration

// The offload tests run the data path with the TAP's offloads ([tap]
// offloads) on and off at either end. A VM whose TAP has offloads hands
// its node 64 KiB TCP frames (TSO), UDP buffers of many datagrams (USO)
// and packets whose checksum is left undone; its node must cut and finish
// them, so that a peer with or without offloads gets exactly what was sent.
// The VMs run two helpers built by TestMain: xfer (a TCP transfer with
// SHA-256 at both ends) and udpgso (UDP datagrams sent with UDP_SEGMENT,
// each checked on arrival).

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
)

const vipC = "10.128.0.3"

// Ports the helpers listen on inside a VM.
const (
	xferPort   = "7001"
	udpgsoPort = "7002"
)

func TestOffloadedTCPCrossesToPeerWithoutOffloads(t *testing.T) {
	vms := startOffloadVMs(t, offloadVM{"a", vipA, nil}, offloadVM{"b", vipB, new(false)})
	a, b := vms[0], vms[1]
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Second)
	defer cancel()

	// Left unset, offloads default to on.
	before := pathCountersOf(checkOffloads(t, ctx, a, true))
	checkOffloads(t, ctx, b, false)
	if f := tapFeatures(t, ctx, a); f["tcp-segmentation-offload"] != "on" {
		t.Fatalf("%s's TAP has TSO %q: its kernel cuts TCP itself and the test would not test", a.Name(), f["tcp-segmentation-offload"])
	}

	for _, c := range []struct {
		from, to *testbed.VM
		addr     string
	}{{a, b, vipB}, {b, a, vipA}} {
		checkIperf(t, c.from, c.addr, iperf(t, ctx, c.from, c.to, c.addr, "-t", "3"))
	}
	file := randomFile(t, a.Dir(), "20M", 20<<20)
	transfer(t, ctx, a, b, vipB, file)
	transfer(t, ctx, b, a, vipA, file)

	// a's big frames went the offload path: whole TSO frames from the TAP,
	// sent in UDP_SEGMENT batches. b has no vnet header and none of that.
	stA, stB := statusOf(t, ctx, a), statusOf(t, ctx, b)
	pa, pb := pathCountersOf(stA), pathCountersOf(stB)
	t.Logf("%s: %+v, data path %v", a.Name(), pa, stA.TAP.DataPath)
	t.Logf("%s: %+v, data path %v", b.Name(), pb, stB.TAP.DataPath)
	if pa.GSOFrames <= before.GSOFrames {
		t.Errorf("%s: from_vm_forwarded_gso stayed at %d: no TSO frame came from the VM", a.Name(), pa.GSOFrames)
	}
	if pa.GSOBatches <= before.GSOBatches {
		t.Errorf("%s: udp_gso_batches stayed at %d: no segment batch went out with UDP_SEGMENT", a.Name(), pa.GSOBatches)
	}
	if pb.GSOFrames != 0 || pb.GSOBatches != 0 {
		t.Errorf("%s without offloads: from_vm_forwarded_gso %d, udp_gso_batches %d; want 0 on the plain path", b.Name(), pb.GSOFrames, pb.GSOBatches)
	}
	checkNoOffloadDrops(t, a.Name(), stA)
}

func TestOffloadedUDPWithUSO(t *testing.T) {
	vms := startOffloadVMs(t, offloadVM{"a", vipA, nil}, offloadVM{"b", vipB, nil}, offloadVM{"c", vipC, new(false)})
	a, b, c := vms[0], vms[1], vms[2]
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Second)
	defer cancel()

	st := checkOffloads(t, ctx, a, true)
	if !slices.Contains(strings.Fields(st.TAP.OffloadSet), "uso4") {
		if kernelAtLeast(6, 2) {
			t.Fatalf("%s: offload_set %q lacks uso4, which Linux has for TAPs since 6.2", a.Name(), st.TAP.OffloadSet)
		}
		t.Skip("the kernel is older than 6.2: a TAP has no USO")
	}
	if f := tapFeatures(t, ctx, a); f["tx-udp-segmentation"] != "on" {
		t.Fatalf("%s's TAP has tx-udp-segmentation %q: its kernel cuts USO buffers itself and the test would not test", a.Name(), f["tx-udp-segmentation"])
	}
	checkOffloads(t, ctx, b, true)
	checkOffloads(t, ctx, c, false)

	// 100 buffers of 19 datagrams of 1200 bytes and one of 700: each
	// buffer is one 23500-byte USO frame on a's TAP.
	const size, last, segs, buffers = 1200, 700, 20, 100
	for _, to := range []struct {
		name string
		vm   *testbed.VM
		addr string
	}{{"to_peer_with_offloads", b, vipB}, {"to_peer_without_offloads", c, vipC}} {
		t.Run(to.name, func(t *testing.T) {
			before := pathCountersOf(st)
			sent, got := udpRun(t, ctx, a, to.vm, to.addr,
				"-size", strconv.Itoa(size), "-last", strconv.Itoa(last), "-segs", strconv.Itoa(segs),
				"-buffers", strconv.Itoa(buffers), "-interval", "2ms")
			if !sent.USO || sent.Datagrams != segs*buffers {
				t.Fatalf("udpgso sent %+v, want %d datagrams with UDP_SEGMENT", sent, segs*buffers)
			}
			checkDatagrams(t, sent, got, size, last)
			st = statusOf(t, ctx, a)
			after := pathCountersOf(st)
			t.Logf("%s: from_vm_forwarded_gso %d -> %d, udp_gso_batches %d -> %d; %s's data path %v",
				a.Name(), before.GSOFrames, after.GSOFrames, before.GSOBatches, after.GSOBatches, to.vm.Name(), statusOf(t, ctx, to.vm).TAP.DataPath)
			// The VM's kernel handed over each buffer whole, as a USO
			// frame; allow for a few lost on the way in.
			if frames := after.GSOFrames - before.GSOFrames; frames*10 < buffers*9 {
				t.Errorf("%s: from_vm_forwarded_gso rose by %d for %d USO buffers sent", a.Name(), frames, buffers)
			}
			if after.GSOBatches <= before.GSOBatches {
				t.Errorf("%s: udp_gso_batches stayed at %d: the segments did not go out in UDP_SEGMENT batches", a.Name(), after.GSOBatches)
			}
			checkNoOffloadDrops(t, a.Name(), st)
		})
	}
}

func TestChecksumOnlyPackets(t *testing.T) {
	vms := startOffloadVMs(t, offloadVM{"a", vipA, nil}, offloadVM{"b", vipB, new(false)})
	a, b := vms[0], vms[1]
	ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
	defer cancel()

	before := pathCountersOf(checkOffloads(t, ctx, a, true))
	checkOffloads(t, ctx, b, false)
	// With checksum offload on its TAP, a's kernel leaves every TCP and
	// UDP checksum to the device (NEEDS_CSUM). b's TAP has no vnet
	// header, so b's kernel checks each checksum and drops a packet whose
	// checksum a's node did not finish: a TCP connection would not even
	// open.
	if f := tapFeatures(t, ctx, a); f["tx-checksumming"] != "on" {
		t.Fatalf("%s's TAP has tx-checksumming %q: its kernel computes checksums itself and the test would not test", a.Name(), f["tx-checksumming"])
	}

	transfer(t, ctx, a, b, vipB, randomFile(t, a.Dir(), "small", 300))
	sent, got := udpRun(t, ctx, a, b, vipB, "-size", "200", "-segs", "1", "-buffers", "50", "-interval", "5ms")
	if sent.USO || sent.Datagrams != 50 {
		t.Fatalf("udpgso sent %+v, want 50 datagrams without UDP_SEGMENT", sent)
	}
	checkDatagrams(t, sent, got, 200)

	// None of it was a GSO frame, whose segments get fresh checksums
	// anyway: what arrived was finished from a partial checksum.
	st := statusOf(t, ctx, a)
	if p := pathCountersOf(st); p.GSOFrames != before.GSOFrames {
		t.Errorf("%s: from_vm_forwarded_gso rose from %d to %d: small packets came as GSO frames and the test did not test", a.Name(), before.GSOFrames, p.GSOFrames)
	}
	checkNoOffloadDrops(t, a.Name(), st)
}

func TestOffloadsOffBothEnds(t *testing.T) {
	vms := startOffloadVMs(t, offloadVM{"a", vipA, new(false)}, offloadVM{"b", vipB, new(false)})
	a, b := vms[0], vms[1]
	ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
	defer cancel()

	checkOffloads(t, ctx, a, false)
	checkOffloads(t, ctx, b, false)
	r, err := a.Ping(ctx, vipB, "-c", "3", "-i", "0.2", "-W", "2")
	if err != nil {
		t.Fatal(err)
	}
	if r.Received != 3 {
		t.Errorf("ping %s -> %s: %d of %d replies", a.Name(), vipB, r.Received, r.Transmitted)
	}
	checkIperf(t, a, vipB, iperf(t, ctx, a, b, vipB, "-t", "3"))
	// Plain frames all the way: nothing took the offload path.
	for _, vm := range []*testbed.VM{a, b} {
		p := pathCountersOf(statusOf(t, ctx, vm))
		if p.GSOFrames != 0 || p.GSOBatches != 0 {
			t.Errorf("%s without offloads: from_vm_forwarded_gso %d, udp_gso_batches %d; want 0", vm.Name(), p.GSOFrames, p.GSOBatches)
		}
	}
}

// checkIperf checks that an iperf3 run from vm to addr moved data, and
// with few retransmits: TCP delivers even over a path that mangles most
// segments (the sender retransmits them one by one), but only so.
func checkIperf(t *testing.T, vm *testbed.VM, addr string, r testbed.IperfResult) {
	t.Helper()
	// About the number of segments sent: 1400 is near the overlay's MSS.
	segs := r.SentBytes / 1400
	if r.Bytes < 1<<20 || uint64(r.Retransmits) > segs/10 {
		t.Errorf("iperf3 %s -> %s: %d bytes received, %d sent with %d retransmits; want 1 MiB at least, and under 10%% retransmitted",
			vm.Name(), addr, r.Bytes, r.SentBytes, r.Retransmits)
	}
}

// offloadVM is one VM of an offload test: its name, its virtual address,
// and its node's [tap] offloads (nil: the default).
type offloadVM struct {
	name, vip string
	offloads  *bool
}

// startOffloadVMs builds the VMs, each at a public site of its own, and
// starts their nodes with each other as static peers; then it waits until
// the first VM reaches each of the others through the overlay.
func startOffloadVMs(t *testing.T, specs ...offloadVM) []*testbed.VM {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	bed := testbed.NewT(t, testbed.Options{RingnetPath: ringnetBin})
	vms := make([]*testbed.VM, len(specs))
	peers := make([]node.Peer, len(specs))
	for i, s := range specs {
		site, err := bed.AddSite(ctx, "site"+s.name, testbed.NATNone)
		if err != nil {
			t.Fatal(err)
		}
		if vms[i], err = bed.AddVM(ctx, site, "vm"+s.name); err != nil {
			t.Fatal(err)
		}
		if peers[i], err = vms[i].PeerEntry(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range specs {
		cfg := nodeConfig(s.vip)
		cfg.TAP.Offloads = s.offloads
		for j, p := range peers {
			if j != i {
				cfg.Peers = append(cfg.Peers, p)
			}
		}
		if err := vms[i].StartNode(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range specs[1:] {
		if err := vms[0].WaitReachable(ctx, s.vip); err != nil {
			t.Fatal(err)
		}
	}
	return vms
}

func statusOf(t *testing.T, ctx context.Context, vm *testbed.VM) node.Status {
	t.Helper()
	st, err := vm.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// checkOffloads checks what vm's node says of its TAP: with on, a vnet
// header with checksum offload and TSO; without, "off". It returns the
// status.
func checkOffloads(t *testing.T, ctx context.Context, vm *testbed.VM, on bool) node.Status {
	t.Helper()
	st := statusOf(t, ctx, vm)
	if !on {
		if st.TAP.Offloads || st.TAP.OffloadSet != "off" {
			t.Fatalf("%s: tap.offloads %v, offload_set %q; want false, \"off\"", vm.Name(), st.TAP.Offloads, st.TAP.OffloadSet)
		}
		return st
	}
	set := strings.Fields(st.TAP.OffloadSet)
	for _, want := range []string{"vnet_hdr", "csum", "tso4"} {
		if !st.TAP.Offloads || !slices.Contains(set, want) {
			t.Fatalf("%s: tap.offloads %v, offload_set %q; want true, with %s", vm.Name(), st.TAP.Offloads, st.TAP.OffloadSet, want)
		}
	}
	t.Logf("%s: offload_set %q", vm.Name(), st.TAP.OffloadSet)
	return st
}

// pathCounters are the status counters that tell which path a node's
// packets from the VM took.
type pathCounters struct {
	GSOFrames  uint64 // TSO and USO frames from the VM (from_vm_forwarded_gso)
	GSOBatches uint64 // UDP_SEGMENT sends (udp_gso_batches)
}

func pathCountersOf(st node.Status) pathCounters {
	return pathCounters{st.TAP.Counters["from_vm_forwarded_gso"], st.TAP.DataPath["udp_gso_batches"]}
}

// checkNoOffloadDrops checks that a node dropped nothing for its vnet
// headers or in Segment.
func checkNoOffloadDrops(t *testing.T, name string, st node.Status) {
	t.Helper()
	for k, v := range st.TAP.Counters {
		if v != 0 && (strings.Contains(k, "vnet_hdr") || strings.Contains(k, "segment") || strings.Contains(k, "gso_too_big")) {
			t.Errorf("%s: %s = %d", name, k, v)
		}
	}
}

// tapFeatures returns the features of the VM's TAP as `ethtool -k` shows
// them, such as "tx-checksumming": "on".
func tapFeatures(t *testing.T, ctx context.Context, vm *testbed.VM) map[string]string {
	t.Helper()
	out, err := vm.Output(ctx, "ethtool", "-k", testbed.TAPName)
	if err != nil {
		t.Fatal(err)
	}
	f := make(map[string]string)
	for line := range strings.Lines(string(out)) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if words := strings.Fields(v); ok && len(words) > 0 {
			f[k] = words[0] // "off [fixed]"
		}
	}
	return f
}

// kernelAtLeast reports whether the running kernel is version
// major.minor or later.
func kernelAtLeast(major, minor int) bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	release := unix.ByteSliceToString(u.Release[:])
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, _ := strconv.Atoi(parts[0])
	mi, _ := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	return ma > major || ma == major && mi >= minor
}

// randomFile writes size random bytes to dir/name and returns its path.
func randomFile(t *testing.T, dir, name string, size int) string {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// xferSummary is what each end of xfer prints.
type xferSummary struct {
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// transfer sends file from one VM to a one-off xfer receiver on the
// other, at addr, and checks that both ends saw the file, byte for byte.
func transfer(t *testing.T, ctx context.Context, from, to *testbed.VM, addr, file string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	want := xferSummary{Bytes: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}

	srv := startListener(t, ctx, to, xferBin, "recv", "-listen", ":"+xferPort)
	start := time.Now()
	out, err := from.Output(ctx, xferBin, "send", "-to", addr+":"+xferPort, "-file", file)
	if err != nil {
		t.Fatalf("xfer %s -> %s: %v\nreceiver: %s", from.Name(), addr, err, srv.Output())
	}
	var sent, got xferSummary
	decodeSummary(t, string(out), &sent)
	waitSummary(t, ctx, srv, &got)
	t.Logf("xfer %s -> %s: %d bytes in %v, sha256 %.16s... at the receiver",
		from.Name(), addr, got.Bytes, time.Since(start).Round(time.Millisecond), got.SHA256)
	if sent != want {
		t.Errorf("xfer %s -> %s: the sender sent %+v, want %+v", from.Name(), addr, sent, want)
	}
	if got != want {
		t.Errorf("xfer %s -> %s: the receiver got %+v, want %+v", from.Name(), addr, got, want)
	}
}

// udpSent and udpGot are what udpgso send and recv print.
type udpSent struct {
	Buffers   int  `json:"buffers"`
	Datagrams int  `json:"datagrams"`
	Bytes     int  `json:"bytes"`
	USO       bool `json:"uso"`
}

type udpGot struct {
	Datagrams  int            `json:"datagrams"`
	Distinct   int            `json:"distinct"`
	Duplicates int            `json:"duplicates"`
	Corrupt    int            `json:"corrupt"`
	Bytes      int            `json:"bytes"`
	MaxSize    int            `json:"max_size"`
	Sizes      map[string]int `json:"sizes"`
}

// udpRun sends datagrams with `udpgso send args...` from one VM to a
// one-off udpgso receiver on the other, at addr, and returns what each end
// counted.
func udpRun(t *testing.T, ctx context.Context, from, to *testbed.VM, addr string, args ...string) (udpSent, udpGot) {
	t.Helper()
	srv := startListener(t, ctx, to, udpgsoBin, "recv", "-listen", ":"+udpgsoPort, "-idle", "1s", "-timeout", "10s")
	out, err := from.Output(ctx, append([]string{udpgsoBin, "send", "-to", addr + ":" + udpgsoPort}, args...)...)
	if err != nil {
		t.Fatalf("udpgso %s -> %s: %v", from.Name(), addr, err)
	}
	var sent udpSent
	var got udpGot
	decodeSummary(t, string(out), &sent)
	waitSummary(t, ctx, srv, &got)
	t.Logf("udpgso %s -> %s: sent %+v; received %+v", from.Name(), addr, sent, got)
	return sent, got
}

// checkDatagrams checks that the datagrams that arrived are the ones sent,
// each whole, on its own and of one of the sizes sent, and that few went
// missing.
func checkDatagrams(t *testing.T, sent udpSent, got udpGot, sizes ...int) {
	t.Helper()
	if got.Corrupt != 0 || got.Duplicates != 0 {
		t.Errorf("%d of %d datagrams arrived corrupt (or cut or joined wrongly), %d twice", got.Corrupt, got.Datagrams, got.Duplicates)
	}
	for s, n := range got.Sizes {
		if size, _ := strconv.Atoi(s); !slices.Contains(sizes, size) {
			t.Errorf("%d datagrams of %s bytes arrived; sent were sizes %v", n, s, sizes)
		}
	}
	// UDP may lose a few, even here; a tenth lost is a fault.
	if got.Distinct*10 < sent.Datagrams*9 {
		t.Errorf("%d of %d datagrams arrived intact", got.Distinct, sent.Datagrams)
	}
}

// startListener starts a helper's receiving end (xfer recv, udpgso recv)
// in vm and waits until its socket is bound.
func startListener(t *testing.T, ctx context.Context, vm *testbed.VM, args ...string) *testbed.Proc {
	t.Helper()
	p, err := vm.Start(args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(syscall.SIGTERM, time.Second) })
	for !strings.Contains(p.Output(), "listening on") {
		if exited, err := p.Exited(); exited {
			t.Fatalf("%s: %v exited before listening: %v\n%s", vm.Name(), args, err, p.Output())
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v not listening: %v", vm.Name(), args, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return p
}

// waitSummary waits for a helper to exit and decodes its summary.
func waitSummary(t *testing.T, ctx context.Context, p *testbed.Proc, v any) {
	t.Helper()
	if err := p.Wait(ctx); err != nil {
		t.Fatalf("%v\n%s", err, p.Output())
	}
	decodeSummary(t, p.Output(), v)
}

// decodeSummary decodes the last line of out that holds a JSON object.
func decodeSummary(t *testing.T, out string, v any) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for _, line := range slices.Backward(lines) {
		if strings.HasPrefix(line, "{") {
			if err := json.Unmarshal([]byte(line), v); err != nil {
				t.Fatalf("summary %q: %v", line, err)
			}
			return
		}
	}
	t.Fatalf("no JSON summary in:\n%s", out)
}
