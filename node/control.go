package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/ringnet/ringnet/overlay"
)

// The control socket serves the node's status as JSON over HTTP on a unix
// socket in the state directory. Only root (or the node's user) can reach
// it: the socket is mode 0600.

type controlServer struct {
	path string
	ln   net.Listener
	srv  *http.Server
}

// listenControl claims the control socket. A socket that still answers
// belongs to a running node, which this one must not disturb; one that
// does not answer is left over from a crash and is replaced.
func listenControl(path string) (*controlServer, error) {
	if _, err := os.Stat(path); err == nil {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("another node is running with this state directory (%s answers)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale control socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return &controlServer{path: path, ln: ln}, nil
}

// handle sets what the socket serves; it must run before serve.
func (c *controlServer) handle(status func() Status, leases func(context.Context) []LeaseInfo) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /leases", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(leases(r.Context()))
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(status())
	})
	// The runtime's profiles (heap, allocs, goroutine, ...), for `go tool
	// pprof`: what a node's memory and goroutines are made of. A heap
	// profile is as of the last garbage collection, minutes ago on an
	// idle node; ?gc=1 runs one first, so that only live objects count.
	mux.HandleFunc("GET /debug/pprof/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		p := pprof.Lookup(name)
		if p == nil {
			http.Error(w, "no such profile", http.StatusNotFound)
			return
		}
		if name == "heap" && r.URL.Query().Get("gc") == "1" {
			runtime.GC()
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		p.WriteTo(w, 0)
	})
	c.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
}

// serve answers requests until close.
func (c *controlServer) serve() { c.srv.Serve(c.ln) }

func (c *controlServer) close() error {
	var err error
	if c.srv != nil {
		err = c.srv.Close()
	} else {
		err = c.ln.Close()
	}
	if rmErr := os.Remove(c.path); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
		err = errors.Join(err, rmErr)
	}
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// FetchStatus asks the node running with stateDir for its status.
func FetchStatus(ctx context.Context, stateDir string) (*Status, error) {
	var st Status
	if err := fetch(ctx, stateDir, "status", &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// FetchLeases asks the node running with stateDir for the namespace's
// leases it can see.
func FetchLeases(ctx context.Context, stateDir string) ([]LeaseInfo, error) {
	var ls []LeaseInfo
	if err := fetch(ctx, stateDir, "leases", &ls); err != nil {
		return nil, err
	}
	return ls, nil
}

// fetch GETs /what from the node's control socket into v.
func fetch(ctx context.Context, stateDir, what string, v any) error {
	path := ControlSocketIn(stateDir)
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, "GET", "http://ringnet/"+what, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("no node answers on %s (is `ringnet up` running with this state directory?): %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("%s: %s: %s", what, resp.Status, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func idStrings[T fmt.Stringer](ids []T) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id.String()
	}
	return out
}

// Status reports the node's state.
func (n *Node) Status() Status {
	st := Status{
		Version:   Version,
		PeerID:    n.ov.ID().String(),
		DataAddr:  n.ov.DataAddr().String(),
		Subnet:    n.subnet.String(),
		Namespace: n.trust.nsID,
		Lease: LeaseStatus{
			Claims:   n.lease.claims.Load(),
			Lost:     n.lease.lost.Load(),
			Offers:   n.lease.offerHistory(),
			Counters: n.ov.AddrCounters(),
		},
		TAP: TAPStatus{
			Name:       n.dev.Name(),
			MTU:        n.mtu,
			GatewayMAC: n.gwMAC.String(),
			Offloads:   n.offloads.VnetHdr,
			OffloadSet: n.offloads.String(),
			Counters:   n.gw.Counters(),
			DataPath:   n.ov.DataPath(),
		},
		Drops:          n.ov.Drops(),
		ControlTraffic: n.ov.ControlTraffic(),
		Memory:         memoryStatus(),
		GOMAXPROCS:     runtime.GOMAXPROCS(0),
		Peers:          []PeerStatus{},
	}
	st.Lease.Counters["dht_invalid"] = n.lease.invalid.Load()
	if d := n.ov.DHT(); d != nil {
		st.Lease.DHT = "client"
		if d.Serving() {
			st.Lease.DHT = "server"
		}
	}
	if l, ok := n.Lease(); ok {
		st.VirtualIP = l.IP.String()
		st.Lease.Addr = l.IP.String()
		st.Lease.Expires = l.Expires.UTC().Format(time.RFC3339)
	}
	st.TAP.Counters["from_vm_drop_bad_vnet_hdr_read"] = n.badVnetHdr.Load()
	st.TAP.Counters["from_vm_drop_segment_failed"] = n.segmentFailed.Load()
	if n.dhcp != nil {
		for k, v := range n.dhcp.Counters() {
			st.TAP.Counters["dhcp_"+k] = v
		}
	}
	for _, a := range n.ov.Host().Addrs() {
		st.Addresses = append(st.Addresses, a.String()+"/p2p/"+n.ov.ID().String())
	}
	nat := n.ov.NAT()
	st.NAT = NATStatus{Mapping: string(nat.Mapping), Counters: map[string]uint64{
		"stun_answered": nat.Answered, "stun_refused": nat.Refused,
		"stun_responses": nat.Responses, "stun_bad_responses": nat.BadResponses,
	}}
	if nat.Public.IsValid() {
		st.NAT.Public = nat.Public.String()
	}
	ringLinks := make(map[string]bool)
	if rs, ok := n.ov.Ring(); ok {
		st.Ring = RingStatus{
			Addr:       rs.Addr.String(),
			EstimateN:  rs.EstimateN,
			FarWanted:  rs.FarWanted,
			FarHave:    rs.FarHave,
			NearCW:     idStrings(rs.NearCW),
			NearCCW:    idStrings(rs.NearCCW),
			Links:      []RingLink{},
			OtherConns: rs.OtherConns,
			Counters:   rs.Counters,
		}
		for _, l := range rs.Links {
			ringLinks[l.Peer.String()] = true
			st.Ring.Links = append(st.Ring.Links, RingLink{
				PeerID: l.Peer.String(), Addr: l.Addr.String(), Kinds: l.Kinds.String(),
				PeerKinds: l.PeerKinds.String(), AgeS: l.Age.Seconds(), Remote: l.Remote,
			})
		}
	}
	for _, p := range n.ov.Peers() {
		ps := PeerStatus{
			PeerID:      p.ID.String(),
			Link:        "static",
			Path:        p.Path.String(),
			Hops:        p.Hops,
			RTTMs:       float64(p.RTT.Microseconds()) / 1000,
			SessionAgeS: p.SessionAge.Seconds(),
			Rekeys:      p.Rekeys,
			TxPackets:   p.TxPackets,
			TxBytes:     p.TxBytes,
			RxPackets:   p.RxPackets,
			RxBytes:     p.RxBytes,
			Drops:       p.Drops,
		}
		switch {
		case p.Static:
		case ringLinks[ps.PeerID]:
			ps.Link = "ring"
		case p.Punched:
			ps.Link = "punched"
		case p.Path == overlay.PathRing:
			ps.Link = "routed"
		default:
			ps.Link = "direct"
		}
		if len(p.Addrs) > 0 {
			ps.VirtualIP = p.Addrs[0].String()
		}
		if p.Endpoint.IsValid() {
			ps.Endpoint = p.Endpoint.String()
		}
		if p.Suite != 0 {
			ps.AEAD = p.Suite.String()
		}
		st.Peers = append(st.Peers, ps)
	}
	return st
}
