// Command ringnet runs and inspects a ringnet node.
//
//	ringnet up --config FILE          run a node until SIGINT or SIGTERM
//	ringnet id [--config FILE | --state-dir DIR]
//	ringnet status [--json] [--config FILE | --state-dir DIR]
//	ringnet leases [--json] [--config FILE | --state-dir DIR]
//	ringnet version
//
// Certificates (see namespace.go): a ring admits, and a namespace accepts
// as a member, only peers with a certificate chain from its owner key.
//
//	ringnet ring create -name NAME -out DIR
//	ringnet namespace create -name NAME -subnet PREFIX -lease DURATION -out DIR
//	ringnet ring|namespace admit -key KEYFILE [-chain CHAINFILE] -peer PEERID -days N -out FILE
//	ringnet ring|namespace delegate -key KEYFILE [-chain CHAINFILE] -out-key KEYFILE -days N -out FILE
//	ringnet ring|namespace revoke -key OWNERKEY (-cert CHAINFILE | -serial HEX) -out FILE
//	ringnet cert show [-root KEY] FILE
//
// Exit status: 0 on success, 1 on a runtime failure, 2 on bad usage or a
// bad config.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringnet/ringnet/node"
	"github.com/ringnet/ringnet/overlay"
	"github.com/ringnet/ringnet/overlay/cert"
)

const usage = `usage:
  ringnet up --config FILE
  ringnet id [--config FILE | --state-dir DIR]
  ringnet status [--json] [--config FILE | --state-dir DIR]
  ringnet leases [--json] [--config FILE | --state-dir DIR]
      the namespace's leases the node sees: its own, those it stores for
      the DHT, and the addresses it sends to
  ringnet version

  ringnet ring create -name NAME -out DIR
  ringnet namespace create -name NAME -subnet PREFIX -lease DURATION -out DIR
      make an owner key DIR/SCOPE-NAME.key and its settings DIR/SCOPE-NAME.toml;
      print the owner public key, which node configs name as the root
  ringnet ring|namespace admit -key KEYFILE [-chain CHAINFILE] -peer PEERID -days N -out FILE
      write the certificate chain that admits a peer; -chain goes with a delegate key
  ringnet ring|namespace delegate -key KEYFILE [-chain CHAINFILE] -out-key KEYFILE -days N -out FILE
      make an enrollment key and the chain that lets it admit peers
  ringnet ring|namespace revoke -key OWNERKEY (-cert CHAINFILE | -serial HEX) -out FILE
      append a revocation, signed by the owner key, to a revocation list file
  ringnet cert show [-root KEY] FILE
      print a certificate chain or revocation list; with -root, verify it
`

// usageError makes main exit with status 2.
type usageError struct{ error }

// Exit statuses other than 1. A service manager should not restart a node
// that ended with either: the same config, or the same state directory,
// would fail again (ringnet.service says RestartPreventExitStatus=2 3).
const (
	exitUsage = 2 // bad flags or config
	exitClone = 3 // another live node holds this node's identity
)

func main() {
	err := run(os.Args[1:], os.Stdout, os.Stderr)
	if err == nil {
		return
	}
	fmt.Fprintf(os.Stderr, "ringnet: %v\n", err)
	var ue usageError
	var ce *node.ConfigError
	switch {
	case errors.As(err, &ue) || errors.As(err, &ce):
		os.Exit(exitUsage)
	case errors.Is(err, overlay.ErrClone):
		os.Exit(exitClone)
	}
	os.Exit(1)
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageError{errors.New("no command")}
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "up":
		return up(args, stderr)
	case "id":
		return id(args, stdout)
	case "status":
		return status(args, stdout)
	case "leases":
		return leases(args, stdout)
	case "ring":
		return scopeCommand(cert.Ring, args, stdout, stderr)
	case "namespace":
		return scopeCommand(cert.Namespace, args, stdout, stderr)
	case "cert":
		return certCommand(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "ringnet", node.Version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return usageError{fmt.Errorf("unknown command %q", cmd)}
}

// stateFlags are the flags by which a command finds a node's state
// directory: many nodes share one file system in tests, so there is no
// single default.
type stateFlags struct {
	config, stateDir string
}

func (s *stateFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.config, "config", "", "node config `file`")
	fs.StringVar(&s.stateDir, "state-dir", "", "node state `directory`")
}

func (s *stateFlags) dir() (string, error) {
	switch {
	case s.config != "" && s.stateDir != "":
		return "", usageError{errors.New("give --config or --state-dir, not both")}
	case s.stateDir != "":
		return s.stateDir, nil
	case s.config != "":
		cfg, err := node.LoadConfig(s.config)
		if err != nil {
			return "", err
		}
		return cfg.StateDir, nil
	}
	return node.DefaultStateDir, nil
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return usageError{fmt.Errorf("%s: %w", fs.Name(), err)}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))}
	}
	return nil
}

// gcPercent is the node's GOGC unless the environment sets one. An idle
// node's live heap is a few MiB, and by default the runtime lets the heap
// grow by as much again before it collects; a node collects sooner and
// stays smaller for a share of a core too small to matter (0.03% more at
// idle), as its data path allocates nothing per packet
// (docs/benchmarks.md, idle).
const gcPercent = 25

// smallMachineProcs is the largest GOMAXPROCS at which a node runs its Go
// code on one thread, unless the environment sets GOMAXPROCS. On a VM of
// two cores, the node shares them with the VM's own work: with one P the
// runtime hands a goroutine the network woke to the thread already
// running rather than waking a second one to steal it, and single-stream
// TCP ran 8% faster (6.80-7.00 against 6.29-6.51 Gbit/s) with
// bidirectional TCP unchanged (6.24-6.57 against 6.29-6.34 Gbit/s in
// all); see docs/performance.md. Larger machines keep Go's default.
const smallMachineProcs = 2

func up(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	configPath := fs.String("config", "", "node config `file`")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *configPath == "" {
		return usageError{errors.New("up: --config is required")}
	}
	cfg, err := node.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	var level slog.Level
	level.UnmarshalText([]byte(cfg.LogLevel)) // validated
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if os.Getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) <= smallMachineProcs {
		runtime.GOMAXPROCS(1)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	n, err := node.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	notified := make(chan struct{})
	go func() {
		defer close(notified)
		notifySystemd(n.Done(), n, log)
	}()
	<-n.Done()
	log.Info("shutting down")
	<-notified
	n.Wait()
	return n.Err()
}

func id(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("id", flag.ContinueOnError)
	var sf stateFlags
	sf.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	dir, err := sf.dir()
	if err != nil {
		return err
	}
	key, err := overlay.LoadOrCreateIdentity(dir)
	if err != nil {
		return err
	}
	pid, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, pid)
	return nil
}

func status(args []string, stdout io.Writer) error {
	return query(args, stdout, "status", node.FetchStatus, printStatus)
}

func leases(args []string, stdout io.Writer) error {
	return query(args, stdout, "leases", node.FetchLeases, printLeases)
}

// query runs a command that asks the running node for something over its
// control socket and prints it, as a table or (--json) as JSON.
func query[T any](args []string, stdout io.Writer, name string,
	fetch func(context.Context, string) (T, error), print func(io.Writer, T)) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	var sf stateFlags
	sf.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	dir, err := sf.dir()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, err := fetch(ctx, dir)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	print(stdout, v)
	return nil
}

func printLeases(w io.Writer, ls []node.LeaseInfo) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tHOLDER\tEXPIRES\tSEEN")
	for _, l := range ls {
		exp := l.Expires
		if exp == "" {
			exp = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", l.Addr, l.Holder, exp, l.Seen)
	}
	tw.Flush()
}

func printStatus(w io.Writer, st *node.Status) {
	fmt.Fprintf(w, "ringnet %s\n", st.Version)
	fmt.Fprintf(w, "peer ID:     %s\n", st.PeerID)
	if st.Lease.Addr != "" {
		fmt.Fprintf(w, "virtual IP:  %s (subnet %s), leased until %s\n", st.VirtualIP, st.Subnet, st.Lease.Expires)
	} else {
		fmt.Fprintf(w, "virtual IP:  none yet (subnet %s): claiming an address\n", st.Subnet)
	}
	fmt.Fprintf(w, "namespace:   %s\n", st.Namespace)
	fmt.Fprintf(w, "TAP:         %s, MTU %d, gateway MAC %s\n", st.TAP.Name, st.TAP.MTU, st.TAP.GatewayMAC)
	fmt.Fprintf(w, "data socket: %s\n", st.DataAddr)
	if st.NAT.Public != "" {
		fmt.Fprintf(w, "NAT:         mapping %s, seen as %s\n", st.NAT.Mapping, st.NAT.Public)
	} else {
		fmt.Fprintf(w, "NAT:         mapping %s\n", st.NAT.Mapping)
	}
	if st.Lease.DHT != "" {
		fmt.Fprintf(w, "DHT:         %s, %d peers\n", st.Lease.DHT, st.Lease.Counters["dht_peers"])
	}
	for _, a := range st.Addresses {
		fmt.Fprintf(w, "listening:   %s\n", a)
	}
	m := st.Memory
	mib := func(b uint64) float64 { return float64(b) / (1 << 20) }
	fmt.Fprintf(w, "memory:      heap %.1f MiB live, %.1f free; stacks %.1f MiB (%d goroutines); runtime %.1f MiB\n",
		mib(m.HeapLive+m.HeapUnused), mib(m.HeapFree), mib(m.Stacks), m.Goroutines, mib(m.Runtime))
	fmt.Fprintf(w, "threads:     GOMAXPROCS %d\n", st.GOMAXPROCS)
	r := st.Ring
	if r.Addr != "" {
		fmt.Fprintf(w, "ring:        address %s, about %.0f nodes, far links %d of %d\n",
			r.Addr, r.EstimateN, r.FarHave, r.FarWanted)
		near := func(ids []string) string {
			s := make([]string, len(ids))
			for i, id := range ids {
				s[i] = shortID(id)
			}
			return strings.Join(s, " ")
		}
		fmt.Fprintf(w, "near:        clockwise %s; anticlockwise %s\n", near(r.NearCW), near(r.NearCCW))
		fmt.Fprintf(w, "\nring links: %d (other control connections: %d)\n", len(r.Links), r.OtherConns)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "PEER\tRING ADDRESS\tKINDS\tPEER KINDS\tAGE\tREMOTE")
		for _, l := range r.Links {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.0fs\t%s\n", shortID(l.PeerID), l.Addr[:12]+"…", l.Kinds, l.PeerKinds, l.AgeS, l.Remote)
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "\npeers: %d\n", len(st.Peers))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tVIRTUAL IP\tLINK\tPATH\tENDPOINT\tAEAD\tHOPS\tRTT\tTX PKTS\tTX BYTES\tRX PKTS\tRX BYTES\tDROPS")
	for _, p := range st.Peers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%.3f ms\t%d\t%d\t%d\t%d\t%d\n",
			shortID(p.PeerID), p.VirtualIP, p.Link, p.Path, p.Endpoint, p.AEAD, p.Hops,
			p.RTTMs, p.TxPackets, p.TxBytes, p.RxPackets, p.RxBytes, p.Drops)
	}
	tw.Flush()
	var drops []string
	for k, v := range st.Drops {
		if v > 0 {
			drops = append(drops, fmt.Sprintf("%s=%d", k, v))
		}
	}
	if len(drops) > 0 {
		fmt.Fprintf(w, "\ndropped datagrams: %v\n", drops)
	}
}

// shortID keeps a peer ID readable in a table: its last 8 characters are
// what tells peers apart.
func shortID(id string) string {
	if len(id) <= 12 {
		return id
	}
	return "…" + id[len(id)-8:]
}
