// Command demo shows ringnet at work: an operator makes a closed ring and
// namespace and admits nine VMs at three sites; they join one ring through
// a single bootstrap node, claim their addresses as leases in the
// overlay's DHT, and reach each other by their virtual addresses, over
// multi-hop paths where they have no link of their own; and a tenth,
// behind a NAT, boots like an appliance: it admits itself with an
// enrollment key and gets a free address by DHCP from its node. It builds
// them as network namespaces (bench/testbed), so it needs root, and removes
// everything when it ends. scripts/demo builds ringnet and runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
)

type member struct {
	name, site, vip string
	vm              *testbed.VM
}

func main() {
	ringnet := flag.String("ringnet", "ringnet", "path of the ringnet binary")
	runID := flag.String("run-id", "", "prefix of every namespace the demo makes (default: random)")
	condor := flag.Bool("condor", false, "instead: boot two HTCondor pools of appliance VMs and flock between them")
	image := flag.String("image", "", "directory of the appliance image (-condor): built there unless a finished build is there")
	mirror := flag.String("mirror", "http://deb.debian.org/debian", "Debian mirror for the appliance image (-condor)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	var err error
	if *condor {
		err = condorDemo(ctx, *ringnet, *runID, *image, *mirror)
	} else {
		err = run(ctx, *ringnet, *runID)
	}
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

// newBed makes the demo's test bed, whose log lines go to stderr.
func newBed(ctx context.Context, ringnet, runID string) (*testbed.Bed, error) {
	return testbed.New(ctx, testbed.Options{
		RingnetPath: ringnet,
		RunID:       runID,
		Logf:        func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) },
	})
}

// closeBed says what it removes, then removes it.
func closeBed(bed *testbed.Bed, what string) {
	fmt.Printf("\nCleaning up: %s and deleting the namespaces.\n", what)
	if err := bed.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: clean up: %v\n", err)
	}
}

func run(ctx context.Context, ringnet, runID string) error {
	bed, err := newBed(ctx, ringnet, runID)
	if err != nil {
		return err
	}
	defer closeBed(bed, "stopping the nodes")
	members := []*member{
		{name: "alice", site: "paris", vip: "10.128.0.1"},
		{name: "bob", site: "tokyo", vip: "10.128.0.2"},
		{name: "carol", site: "lima", vip: "10.128.0.3"},
		{name: "erin", site: "paris", vip: "10.128.0.5"},
		{name: "frank", site: "tokyo", vip: "10.128.0.6"},
		{name: "grace", site: "lima", vip: "10.128.0.7"},
		{name: "heidi", site: "paris", vip: "10.128.0.8"},
		{name: "ivan", site: "tokyo", vip: "10.128.0.9"},
		{name: "judy", site: "lima", vip: "10.128.0.10"},
	}
	say("Building a small internet in network namespaces (run %s): a core router and three sites.", bed.RunID())
	sites := make(map[string]*testbed.Site)
	for _, m := range members {
		site := sites[m.site]
		if site == nil {
			if site, err = bed.AddSite(ctx, m.site, testbed.NATNone); err != nil {
				return err
			}
			sites[m.site] = site
		}
		if m.vm, err = bed.AddVM(ctx, site, m.name); err != nil {
			return err
		}
		id, err := m.vm.PeerID(ctx)
		if err != nil {
			return err
		}
		say("  VM %-5s at site %-5s: underlay address %v, ringnet peer ID %s", m.name, m.site, m.vm.UnderlayIP(), id)
	}

	op, err := newOperator(ctx, ringnet, bed.WorkDir())
	if err != nil {
		return err
	}
	for _, m := range members {
		if err := op.admit(ctx, m.vm); err != nil {
			return err
		}
	}
	say("  and admitted each VM's peer ID to both (ringnet ring|namespace admit -peer ID ...).")

	boot, err := members[0].vm.BootstrapAddr(ctx)
	if err != nil {
		return err
	}
	say("\nStarting a ringnet node in each VM. %s's starts the ring; every other node is", members[0].name)
	say("given only one bootstrap address, %s's:\n  bootstrap = [\"%s\"]", members[0].name, boot)
	say("Each node claims its address as a lease in the overlay's DHT: the first claim on an")
	say("address wins, and a node offers it to its VM only once most of the DHT agrees.")
	vms, vips := make([]*testbed.VM, len(members)), make([]string, len(members))
	for i, m := range members {
		vms[i], vips[i] = m.vm, m.vip+"/16"
	}
	if err := testbed.StartRing(ctx, op.config(), vms, vips); err != nil {
		bed.DumpLogs(30)
		return err
	}
	for _, m := range members {
		if err := waitLease(ctx, m.vm); err != nil {
			bed.DumpLogs(30)
			return err
		}
	}
	if err := waitRing(ctx, vms); err != nil {
		bed.DumpLogs(30)
		return err
	}
	a := members[0]
	st, err := a.vm.Status(ctx)
	if err != nil {
		return err
	}
	say("  The nodes found their places on the ring by themselves. %s's node (ringnet status):", a.name)
	say("    ring address %s…, about %.0f nodes", st.Ring.Addr[:16], st.Ring.EstimateN)
	for _, l := range st.Ring.Links {
		say("    link to %-5s %s: kept for %s by %s, for %s by the other end", nameOf(members, l.PeerID), l.Addr[:12]+"…", l.Kinds, a.name, l.PeerKinds)
	}

	say("\nEach VM pings the others' virtual addresses; the packets travel through ringnet,")
	say("over a link where two nodes have one, and over the ring (several hops) where not.")
	for _, m := range members {
		var sent, got int
		var rtt float64
		for _, o := range members {
			if o == m {
				continue
			}
			if err := m.vm.WaitReachable(ctx, o.vip); err != nil {
				return err
			}
			r, err := m.vm.Ping(ctx, o.vip, "-c", "2", "-i", "0.2", "-W", "2")
			if err != nil {
				return err
			}
			sent, got, rtt = sent+r.Transmitted, got+r.Received, rtt+r.AvgRTTMs*float64(r.Received)
		}
		say("  %-5s -> the %d others: %d of %d replies, average round trip %.3f ms", m.name, len(members)-1, got, sent, rtt/float64(max(got, 1)))
	}

	if st, err = a.vm.Status(ctx); err != nil {
		return err
	}
	say("\nWhat %s's node reports about its peers (ringnet status):", a.name)
	b := members[1]
	for _, p := range st.Peers {
		say("  %-5s: link %-6s path %-4s %d hop(s), round trip %.3f ms, %d packets sent, %d received",
			nameOf(members, p.PeerID), p.Link, p.Path, p.Hops, p.RTTMs, p.TxPackets, p.RxPackets)
		if p.Link == "routed" {
			b = members[slices.IndexFunc(members, func(m *member) bool { return m.name == nameOf(members, p.PeerID) })]
		}
	}

	say("\nA 3-second TCP transfer with iperf3 from %s to %s through the overlay.", a.name, b.name)
	if _, err := b.vm.StartIperf3Server(true); err != nil {
		return err
	}
	r, err := a.vm.Iperf3(ctx, b.vip, "-t", "3")
	if err != nil {
		return err
	}
	say("  %s received %.1f MB in %.1f s: %.2f Gbit/s.", b.name, float64(r.Bytes)/1e6, r.Seconds, r.BitsPerSecond/1e9)

	out, err := exec.CommandContext(ctx, ringnet, "leases", "--state-dir", a.vm.StateDir()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ringnet leases: %w\n%s", err, out)
	}
	say("\nThe leases %s's node sees (ringnet leases): its own, the records it stores for the DHT,", a.name)
	say("and the addresses it sends to.")
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		say("  %s", line)
	}

	if err := dhcpDemo(ctx, bed, op, a); err != nil {
		return err
	}
	say("\nDone: ten VMs at four sites talked over their virtual addresses through ringnet.")
	return nil
}

// waitRing waits until every node's near neighbours are the true ones.
func waitRing(ctx context.Context, vms []*testbed.VM) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		_, err := testbed.RingConsistent(ctx, vms)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the ring did not settle: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// nameOf returns the name of the member with peer ID id.
func nameOf(members []*member, id string) string {
	for _, m := range members {
		if got, err := m.vm.PeerID(context.Background()); err == nil && got == id {
			return m.name
		}
	}
	return id
}

// udhcpcScript configures only the VM's own interface with what the DHCP
// server handed out.
const udhcpcScript = `#!/bin/sh
case "$1" in
bound|renew)
	ip addr flush dev "$interface"
	ip addr add "$ip/$mask" dev "$interface"
	[ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu" ;;
esac
`

// dhcpDemo boots a VM the way an appliance image does: its image carries
// enrollment keys rather than certificates, its node leaves the TAP
// unconfigured and picks a free address, and the VM's own DHCP client
// asks the node for it.
func dhcpDemo(ctx context.Context, bed *testbed.Bed, op *operator, peer *member) error {
	say("\nA tenth VM, dave, boots like an appliance behind a NAT. Its image carries no")
	say("certificate of its own, only enrollment keys the operator made for images")
	say("(ringnet ring|namespace delegate): the node admits itself at boot. Its config names")
	say("no address: the node claims a free one in the namespace, and dave's own DHCP")
	say("client (busybox udhcpc) gets it from the node. The node joins the ring through")
	say("%s's address; the nodes that answer cannot dial it through its NAT, so they ask", peer.name)
	say("it to dial them instead.")
	site, err := bed.AddSite(ctx, "oslo", testbed.NATCone)
	if err != nil {
		return err
	}
	dave, err := bed.AddVM(ctx, site, "dave")
	if err != nil {
		return err
	}
	boot, err := peer.vm.BootstrapAddr(ctx)
	if err != nil {
		return err
	}
	cfg, err := op.enroll(ctx, dave)
	if err != nil {
		return err
	}
	no := false
	cfg.TAP.ConfigureAddress = &no
	cfg.Bootstrap = []string{boot}
	if err := dave.StartNode(ctx, cfg); err != nil {
		bed.DumpLogs(30)
		return err
	}
	script := filepath.Join(dave.Dir(), "udhcpc.sh")
	if err := os.WriteFile(script, []byte(udhcpcScript), 0o755); err != nil {
		return err
	}
	if out, err := dave.Output(ctx, "udhcpc", "-i", testbed.TAPName, "-q", "-n", "-t", "5", "-T", "1", "-s", script); err != nil {
		return fmt.Errorf("udhcpc in dave: %w\n%s", err, out)
	}
	addr, err := dave.Output(ctx, "ip", "-4", "-o", "addr", "show", "dev", testbed.TAPName)
	if err != nil {
		return err
	}
	mtu, err := dave.Output(ctx, "cat", "/sys/class/net/"+testbed.TAPName+"/mtu")
	if err != nil {
		return err
	}
	fields := strings.Fields(string(addr))
	if len(fields) < 4 {
		return fmt.Errorf("dave has no address after DHCP: %q", addr)
	}
	say("  dave's DHCP client got %s with MTU %s (the overlay's, so nothing fragments).", fields[3], strings.TrimSpace(string(mtu)))
	if err := dave.WaitReachable(ctx, peer.vip); err != nil {
		return err
	}
	r, err := dave.Ping(ctx, peer.vip, "-c", "3", "-i", "0.2", "-W", "2")
	if err != nil {
		return err
	}
	say("  dave -> %s (%s): %d of %d replies, average round trip %.3f ms", peer.name, peer.vip, r.Received, r.Transmitted, r.AvgRTTMs)
	st, err := dave.Status(ctx)
	if err != nil {
		return err
	}
	say("  dave's node: %d ring links; by STUN through its links it sees its NAT as %s, public address %s.",
		len(st.Ring.Links), st.NAT.Mapping, st.NAT.Public)
	if st.Lease.DHT == "client" {
		say("  Behind a NAT nobody can dial it, so it uses the DHT as a client: it asks the public nodes, and stores no one's records.")
	} else {
		say("  It still serves the DHT (%s): it has not yet learned that nobody can dial it.", st.Lease.DHT)
	}
	return nil
}

func say(format string, args ...any) { fmt.Printf(format+"\n", args...) }

// operator holds the ring's and the namespace's owner keys, and runs the
// ringnet commands an operator would.
type operator struct {
	ringnet, dir     string
	ringRoot, nsRoot string
}

func newOperator(ctx context.Context, ringnet, dir string) (*operator, error) {
	op := &operator{ringnet: ringnet, dir: filepath.Join(dir, "operator")}
	var err error
	say("\nThe operator makes a closed ring and a namespace with owner keys of their own:")
	if op.ringRoot, err = op.cmd(ctx, "ring", "create", "-name", "grid", "-out", op.dir); err != nil {
		return nil, err
	}
	if op.nsRoot, err = op.cmd(ctx, "namespace", "create", "-name", "lab", "-subnet", "10.128.0.0/16",
		"-lease", "1h", "-out", op.dir); err != nil {
		return nil, err
	}
	say("  ringnet ring create -name grid               -> owner key %s…", op.ringRoot[:16])
	say("  ringnet namespace create -name lab -subnet 10.128.0.0/16 -lease 1h -> owner key %s…", op.nsRoot[:16])
	return op, nil
}

func (op *operator) cmd(ctx context.Context, args ...string) (string, error) {
	var stderr strings.Builder
	c := exec.CommandContext(ctx, op.ringnet, args...)
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		return "", fmt.Errorf("ringnet %s: %w\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

// admit issues vm's node its ring and namespace certificates, into its
// state directory.
func (op *operator) admit(ctx context.Context, vm *testbed.VM) error {
	id, err := vm.PeerID(ctx)
	if err != nil {
		return err
	}
	for _, scope := range []string{"ring", "namespace"} {
		name := map[string]string{"ring": "grid", "namespace": "lab"}[scope]
		if _, err := op.cmd(ctx, scope, "admit", "-key", filepath.Join(op.dir, scope+"-"+name+".key"),
			"-peer", id, "-days", "1", "-out", filepath.Join(vm.StateDir(), scope+".pem")); err != nil {
			return err
		}
	}
	return nil
}

// config is the trust part of a member's config.
func (op *operator) config() node.Config {
	return node.Config{
		Ring:      node.RingConfig{Name: "grid", Root: op.ringRoot, Cert: "ring.pem"},
		Namespace: node.NamespaceConfig{Name: "lab", Root: op.nsRoot, Cert: "namespace.pem"},
	}
}

// enroll puts enrollment keys and their chains into vm's state directory,
// as an appliance image would carry them, and returns the config that
// names them.
func (op *operator) enroll(ctx context.Context, vm *testbed.VM) (node.Config, error) {
	for _, scope := range []string{"ring", "namespace"} {
		name := map[string]string{"ring": "grid", "namespace": "lab"}[scope]
		if _, err := op.cmd(ctx, scope, "delegate", "-key", filepath.Join(op.dir, scope+"-"+name+".key"),
			"-out-key", filepath.Join(vm.StateDir(), scope+"-enroll.key"), "-days", "1",
			"-out", filepath.Join(vm.StateDir(), scope+"-enroll.pem")); err != nil {
			return node.Config{}, err
		}
	}
	cfg := op.config()
	cfg.Ring.Cert, cfg.Ring.EnrollKey = "ring-enroll.pem", "ring-enroll.key"
	cfg.Namespace.Cert, cfg.Namespace.EnrollKey = "namespace-enroll.pem", "namespace-enroll.key"
	return cfg, nil
}

// waitLease waits until vm's node holds its lease.
func waitLease(ctx context.Context, vm *testbed.VM) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		st, err := vm.Status(ctx)
		if err == nil && st.Lease.Addr != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s's node holds no lease: %w", vm.Name(), ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
