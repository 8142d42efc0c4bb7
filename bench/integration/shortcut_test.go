package integration

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
	"github.com/ringnet/ringnet/routing"
)

// peerView is what a's node reports about b: its ring link's kinds and
// the peer's kinds for it, as "kinds/peer-kinds" ("" for no link), and
// the session's path and hops. Both ends count a flow's packets, so
// either may ask for the shortcut first: it is the link's kind at that
// end, and the peer kind at the other.
func peerView(t *testing.T, a, b *ringVM) (kinds string, p node.PeerStatus) {
	t.Helper()
	st, err := a.vm.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range st.Ring.Links {
		if l.PeerID == b.id {
			kinds = l.Kinds + "/" + l.PeerKinds
		}
	}
	for _, ps := range st.Peers {
		if ps.PeerID == b.id {
			p = ps
		}
	}
	return kinds, p
}

// TestShortcutFormsAndIdlesOut starts a flow between two VMs whose nodes
// have no link of their own: it begins on a multi-hop ring path, a
// shortcut forms and the flow moves to it; idle, the shortcut goes; when
// traffic resumes it forms again.
func TestShortcutFormsAndIdlesOut(t *testing.T) {
	bed, vms := newRingBed(t, 10, 2)
	var a, b *ringVM
	defer func() {
		if !t.Failed() {
			return
		}
		bed.DumpLogs(20)
		if a == nil || b == nil {
			return
		}
		// What the two ends said of each other, of shortcuts and of
		// sessions: a flow that lost packets shows why here.
		for _, v := range []*ringVM{a, b} {
			other := a
			if v == a {
				other = b
			}
			data, _ := os.ReadFile(v.vm.LogPath())
			var keep []string
			for _, line := range strings.Split(string(data), "\n") {
				if strings.Contains(line, other.id) || strings.Contains(line, "shortcut") {
					keep = append(keep, line)
				}
			}
			t.Logf("%s (%s) on %s:\n%s", v.vip, v.id, other.vip, strings.Join(keep, "\n"))
		}
	}()
	base := node.Config{LogLevel: "debug", Shortcuts: node.ShortcutConfig{IdleTimeout: "5s"}}
	startRing(t, base, vms)
	waitRingConsistent(t, vms, 60*time.Second)

	// A pair that the ring links only over several hops.
	for _, x := range vms {
		st, err := x.vm.Status(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, y := range vms {
			if y != x && !slices.ContainsFunc(st.Ring.Links, func(l node.RingLink) bool { return l.PeerID == y.id }) {
				a, b = x, y
			}
		}
	}
	if a == nil {
		t.Fatal("every node links to every other: no multi-hop pair")
	}
	ctx := t.Context()
	if err := a.vm.WaitReachable(ctx, b.vip); err != nil {
		t.Fatal(err)
	}
	if _, p := peerView(t, a, b); p.Link != "routed" || p.Hops < 2 {
		t.Fatalf("before any traffic, %s reaches %s by %s with %d hops; want routed, at least 2", a.vip, b.vip, p.Link, p.Hops)
	}

	flow := func() {
		t.Helper()
		// 20 packets a second for 3 s: past the threshold in about a second.
		if r, err := a.vm.Ping(ctx, b.vip, "-i", "0.05", "-c", "60", "-W", "1"); err != nil || r.Received < 55 {
			t.Fatalf("flow: %+v %v", r, err)
		}
	}
	flow()
	waitFor(t, "a shortcut that carries the flow", func() bool {
		kinds, p := peerView(t, a, b)
		return strings.Contains(kinds, "shortcut") && p.Hops == 1 && (p.Path == "udp" || p.Path == "stream")
	})
	// The counters of the end that asked.
	counter := func(name string) uint64 {
		var n uint64
		for _, v := range []*ringVM{a, b} {
			st, err := v.vm.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			n += st.Ring.Counters[name]
		}
		return n
	}
	t.Logf("shortcut %s -> %s formed: %d formed, time from the flow's first packet to the direct path %d ms",
		a.vip, b.vip, counter("shortcuts_formed"), counter("time_to_direct_ms"))

	deadline := time.Now().Add(20 * time.Second)
	for {
		kinds, p := peerView(t, a, b)
		if !strings.Contains(kinds, "shortcut") {
			break
		}
		if time.Now().After(deadline) {
			st, _ := a.vm.Status(ctx)
			t.Fatalf("the idle shortcut was not dropped: kinds %s, peer %+v, counters %v", kinds, p, st.Ring.Counters)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if counter("shortcuts_dropped") < 1 {
		t.Fatal("no shortcut counted as dropped at either end")
	}
	formed := counter("shortcuts_formed")
	flow()
	waitFor(t, "the shortcut to form again", func() bool { return counter("shortcuts_formed") > formed })
	t.Logf("idle shortcut dropped after 5 s, and formed again when traffic resumed")
}

// natPair builds public ring nodes and two VMs behind NATs of the given
// kind, and starts the ring.
func natPair(t *testing.T, kind testbed.NATKind, base node.Config) (vms []*ringVM, a, b *ringVM) {
	t.Helper()
	bed, vms := newRingBed(t, 6, 2)
	t.Cleanup(func() {
		if t.Failed() {
			bed.DumpLogs(30)
		}
		if t.Failed() {
			// How the NATs mapped the nodes' sockets tells why a
			// punch failed.
			for _, ns := range bed.Namespaces() {
				if strings.Contains(ns, "nat") {
					out, _ := exec.Command("ip", "netns", "exec", ns, "sh", "-c", "cat /proc/net/nf_conntrack | grep udp; nft list ruleset").CombinedOutput()
					t.Logf("conntrack in %s:\n%s", ns, out)
				}
			}
		}
	})
	for i := range 2 {
		site, err := bed.AddSite(t.Context(), fmt.Sprintf("nat%d", i), kind)
		if err != nil {
			t.Fatal(err)
		}
		vm, err := bed.AddVM(t.Context(), site, fmt.Sprintf("n%d", i))
		if err != nil {
			t.Fatal(err)
		}
		vms = append(vms, &ringVM{vm: vm, vip: fmt.Sprintf("10.128.1.%d", 101+i)})
	}
	// Identities that put at least NearPerSide public nodes between the
	// two on both sides: they are not near neighbours, which would link
	// directly (docs/nat.md), and their flow starts on a multi-hop path.
	keys, err := testbed.KeysApart(8, 6, 7, routing.NearPerSide)
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		if err := vms[i].vm.SetIdentity(k); err != nil {
			t.Fatal(err)
		}
	}
	startRing(t, base, vms)
	a, b = vms[6], vms[7]
	for _, v := range []*ringVM{a, b} {
		waitFor(t, v.vip+" to join and learn its NAT", func() bool {
			st, err := v.vm.Status(t.Context())
			return err == nil && len(st.Ring.NearCW) > 0 && len(st.Ring.NearCCW) > 0 && st.NAT.Mapping != "unknown"
		})
	}
	// Behind their NATs both are DHT clients, and each claimed its own
	// address at the first try through the public nodes' DHT.
	for _, v := range []*ringVM{a, b} {
		var st node.Status
		waitFor(t, v.vip+" to hold a lease", func() bool {
			var err error
			st, err = v.vm.Status(t.Context())
			return err == nil && st.Lease.Addr != ""
		})
		if st.Lease.Addr != v.vip || st.Lease.Claims != 1 || st.Lease.DHT != "client" {
			t.Fatalf("behind a %v NAT, %s holds %q after %d claims, DHT %q; want its own address at the first claim, as a DHT client",
				kind, v.vip, st.Lease.Addr, st.Lease.Claims, st.Lease.DHT)
		}
	}
	return vms, a, b
}

// TestShortcutPunchedThroughNATs: two VMs behind two port-preserving NATs
// start a flow over the ring; the shortcut cannot be dialled either way,
// so the nodes punch a UDP path and the flow moves to it.
func TestShortcutPunchedThroughNATs(t *testing.T) {
	_, a, b := natPair(t, testbed.NATCone, node.Config{LogLevel: "debug"})
	ctx := t.Context()
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, v := range []*ringVM{a, b} {
			data, _ := os.ReadFile(v.vm.LogPath())
			var keep []string
			for _, line := range strings.Split(string(data), "\n") {
				if strings.Contains(line, "punch") || strings.Contains(line, "shortcut") ||
					strings.Contains(line, "endpoint") || strings.Contains(line, a.id[len(a.id)-6:]) || strings.Contains(line, b.id[len(b.id)-6:]) {
					keep = append(keep, line)
				}
			}
			t.Logf("%s (%s) log:\n%s", v.vip, v.id, strings.Join(keep, "\n"))
		}
	})
	if err := a.vm.WaitReachable(ctx, b.vip); err != nil {
		t.Fatal(err)
	}
	if _, p := peerView(t, a, b); p.Link != "routed" {
		t.Fatalf("before the flow: %s reaches %s by %q", a.vip, b.vip, p.Link)
	}
	if r, err := a.vm.Ping(ctx, b.vip, "-i", "0.05", "-c", "60", "-W", "1"); err != nil || r.Received < 55 {
		t.Fatalf("flow: %+v %v", r, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, p := peerView(t, a, b)
		if p.Link == "punched" && p.Hops == 1 && p.Path == "udp" {
			break
		}
		if time.Now().After(deadline) {
			sa, _ := a.vm.Status(ctx)
			sb, _ := b.vm.Status(ctx)
			t.Fatalf("no punched path: a sees b as %+v\na: nat %+v\nb: nat %+v\n%s", p, sa.NAT, sb.NAT, describePeer(t, a, b))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if r, err := a.vm.Ping(ctx, b.vip, "-i", "0.05", "-c", "20", "-W", "1"); err != nil || r.Received < 19 {
		t.Fatalf("over the punched path: %+v %v", r, err)
	}
	st, _ := a.vm.Status(ctx)
	_, p := peerView(t, a, b)
	t.Logf("punched %s -> %s at %s: %d punched, time to direct %d ms", a.vip, b.vip, p.Endpoint,
		st.Ring.Counters["shortcuts_punched"], st.Ring.Counters["time_to_direct_ms"])
}

// TestShortcutGivesUpBehindSymmetricNATs: behind two NATs that map each
// destination to a new port, no shortcut can form; traffic keeps flowing
// over the ring, and the node stops asking after max_tries failures.
func TestShortcutGivesUpBehindSymmetricNATs(t *testing.T) {
	base := node.Config{Shortcuts: node.ShortcutConfig{RetryAfter: "1s", MaxTries: 3}}
	_, a, b := natPair(t, testbed.NATSymmetric, base)
	ctx := t.Context()
	if err := a.vm.WaitReachable(ctx, b.vip); err != nil {
		t.Fatal(err)
	}
	counters := func() (failed, sent uint64) {
		st, err := a.vm.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st.Ring.Counters["shortcuts_failed"], st.Ring.Counters["punches_sent"]
	}
	// 25 s of traffic: three tries (each given up after 3 s) and their
	// back-off (1, 2 s) fit, and then some.
	r, err := a.vm.Ping(ctx, b.vip, "-i", "0.05", "-c", "500", "-W", "1")
	if err != nil || r.Received < 495 {
		t.Fatalf("flow over the ring: %+v %v", r, err)
	}
	failed, punches := counters()
	if _, p := peerView(t, a, b); p.Link != "routed" || p.Hops < 2 {
		t.Fatalf("%s reaches %s by %q with %d hops; want routed over the ring", a.vip, b.vip, p.Link, p.Hops)
	}
	if failed != 3 {
		t.Fatalf("shortcuts_failed = %d after 25 s, want max_tries = 3", failed)
	}
	// It has stopped: more traffic, no more tries.
	if r, err := a.vm.Ping(ctx, b.vip, "-i", "0.05", "-c", "100", "-W", "1"); err != nil || r.Received < 99 {
		t.Fatalf("flow over the ring: %+v %v", r, err)
	}
	if f, p := counters(); f != failed || p != punches {
		t.Fatalf("still trying after max_tries: failed %d -> %d, punches sent %d -> %d", failed, f, punches, p)
	}
	t.Logf("behind symmetric NATs: %d of %d pings over the ring; %d shortcut tries (%d punches) failed, then it stopped asking",
		r.Received, r.Transmitted, failed, punches)
}
