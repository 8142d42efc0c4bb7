package overlay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	dssync "github.com/ipfs/go-datastore/sync"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	dhtpb "github.com/libp2p/go-libp2p-kad-dht/pb"
	kb "github.com/libp2p/go-libp2p-kbucket"
	record "github.com/libp2p/go-libp2p-record"
	recpb "github.com/libp2p/go-libp2p-record/pb"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	"github.com/multiformats/go-base32"
	"google.golang.org/protobuf/proto"
)

// The overlay's DHT holds records that must outlive any one node: leases
// of virtual addresses, revocations. It is go-libp2p-kad-dht under the
// project's own protocol prefix, with no bootstrap list of its own: it
// finds its peers on the ring's links. A node serves the DHT (stores
// records, answers lookups) unless it knows it is behind a NAT (reach.go):
// others cannot dial such a node, so as a server it would only make their
// lookups wait on dials that fail. Behind a NAT it is a DHT client, which
// asks and puts through the servers it dials out to.
//
// Records are checked twice. The Validator decides which records are
// well-formed and which of two is better; the Admit hook runs where a
// record would be stored, with the record this node already holds, and
// may refuse: that is how a replica keeps the first claim it stored for an
// address, whatever the claimant's view of which is better.
const (
	dhtPrefix = "/ringnet"
	// getQuorum is how many records a Get waits for before it picks.
	getQuorum = 3
	// closestTimeout bounds the lookup of a Replicas read, and
	// replicaTimeout one replica's answer.
	closestTimeout = 2 * time.Second
	replicaTimeout = 2 * time.Second
	// admitIdentifyWait bounds how long a newly admitted peer's identify
	// is waited for before the routing table is offered the peer.
	admitIdentifyWait = 5 * time.Second
	// rtWait bounds how long a lookup waits for the routing table of a
	// node that has peers but has not yet heard which of them serve.
	rtWait = 2 * time.Second
)

// kadProtocol is the protocol DHT servers handle.
const kadProtocol = protocol.ID(dhtPrefix + "/kad/1.0.0")

// ErrRefused wraps what a DHT replica's Admit hook refused.
var ErrRefused = errors.New("record refused")

// DHTConfig configures the overlay's DHT.
type DHTConfig struct {
	// Validator checks records; a record.NamespacedValidator dispatches
	// on the key's first path element ("/lease/...").
	Validator record.Validator
	// Admit, if set, is asked before this node stores a record for key:
	// existing is the record it holds (nil if none). An error refuses
	// the new record.
	Admit func(key string, existing, incoming []byte) error
}

// DHT is the overlay's record store.
type DHT struct {
	kad   *dht.IpfsDHT
	pm    *dhtpb.ProtocolMessenger
	id    peer.ID
	host  host.Host
	store *admittingStore

	// reach tells kad-dht (in ModeAutoServer) whether this node is
	// reachable; reachMu guards reachNow, the last state told.
	reach    event.Emitter
	reachMu  sync.Mutex
	reachNow network.Reachability
}

func newDHT(h host.Host, cfg DHTConfig, o *Overlay) (*DHT, error) {
	if cfg.Validator == nil {
		return nil, errors.New("dht: no validator")
	}
	store := &admittingStore{Batching: dssync.MutexWrap(ds.NewMapDatastore()), admit: cfg.Admit}
	// The DHT serves until told otherwise: a node whose reachability is
	// not known yet (no STUN answer so far) is most likely public, and a
	// ring must have servers from its first minute.
	reach, err := h.EventBus().Emitter(new(event.EvtLocalReachabilityChanged), eventbus.Stateful)
	if err != nil {
		return nil, fmt.Errorf("dht reachability emitter: %w", err)
	}
	kad, err := dht.New(h,
		dht.Mode(dht.ModeAutoServer),
		dht.ProtocolPrefix(dhtPrefix),
		dht.Validator(cfg.Validator),
		dht.Datastore(store),
		dht.DisableProviders(),
		// In a closed ring, only admitted peers take part.
		dht.RoutingTableFilter(func(_ any, p peer.ID) bool { return o.isAdmitted(p, time.Now()) }),
		dht.QueryFilter(func(_ any, ai peer.AddrInfo) bool { return !o.refusedPeer(ai.ID) }),
		dht.OnRequestHook(func(_ context.Context, s network.Stream, req *dhtpb.Message) {
			if !o.waitAdmitted(s.Conn().RemotePeer()) {
				o.admit.gated.Add(1)
				req.Type = -1 // no handler: the request is dropped
			}
		}),
		// The ring keeps the links; the DHT's own refresh only needs to
		// fill its buckets now and then.
		dht.RoutingTableRefreshPeriod(10*time.Minute),
	)
	if err != nil {
		reach.Close()
		return nil, fmt.Errorf("dht: %w", err)
	}
	pm, err := dhtpb.NewProtocolMessenger(kad.MessageSender())
	if err != nil {
		kad.Close()
		reach.Close()
		return nil, fmt.Errorf("dht messenger: %w", err)
	}
	return &DHT{kad: kad, pm: pm, id: h.ID(), host: h, store: store, reach: reach}, nil
}

// setReachability tells kad-dht whether others can dial this node: not
// (Private) makes it a client; yes or not known (Public, Unknown) a
// server. It emits only changes.
func (d *DHT) setReachability(r network.Reachability) {
	d.reachMu.Lock()
	defer d.reachMu.Unlock()
	if r == d.reachNow {
		return
	}
	d.reachNow = r
	d.reach.Emit(event.EvtLocalReachabilityChanged{Reachability: r})
}

// peerAdmitted offers a peer just admitted to the ring to the routing
// table. kad-dht considers a peer when identify completes, which may come
// before its admission (the routing table filter then keeps it out, and
// nothing makes kad-dht look again) or after it (kad-dht then checks it
// with a request that the peer may hold back until it has admitted this
// node in turn). So the peer is added here once identify shows that it
// serves the DHT, waiting for that up to admitIdentifyWait.
func (d *DHT) peerAdmitted(ctx context.Context, p peer.ID) {
	serves := func() bool {
		ok, err := d.host.Peerstore().SupportsProtocols(p, kadProtocol)
		return err == nil && len(ok) > 0
	}
	if pollUntil(ctx, admitIdentifyWait, serves) {
		d.kad.RoutingTable().TryAddPeer(p, true, false)
	}
}

// Serving reports whether this node is a DHT server: stores records for
// others and answers their lookups. kad-dht reports its options, not its
// mode, so this asks whether the host handles the DHT protocol.
func (d *DHT) Serving() bool {
	return slices.Contains(d.host.Mux().Protocols(), kadProtocol)
}

// Put stores value under key here and at the closest nodes that take it.
// It fails when this node refuses the record itself; which others took it
// only a Replicas read tells.
func (d *DHT) Put(ctx context.Context, key string, value []byte) error {
	err := d.kad.PutValue(ctx, key, value)
	if errors.Is(err, kb.ErrLookupFailure) {
		return nil // alone: stored here only
	}
	if err != nil {
		return fmt.Errorf("dht put %q: %w", key, err)
	}
	return nil
}

// Get returns the best record for key among the first few that the
// nodes closest to it return. A lookup that runs out of time returns the
// best record it found by then, if any: dead nodes among the closest must
// not cost a record that live ones returned.
func (d *DHT) Get(ctx context.Context, key string) ([]byte, error) {
	d.waitRoutingTable(ctx)
	v, err := d.kad.GetValue(ctx, key, dht.Quorum(getQuorum))
	if v != nil {
		return v, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dht get %q: %w", key, err)
	}
	return v, nil
}

// Replicas asks each of the k nodes closest to key for the record it
// stores, and returns the records they hold and how many were asked. This
// node is one of them only if it is among the k closest: counting its own
// store otherwise would let two claimants each see a majority. A node
// that does not answer counts as asked: a claim needs a majority of all.
func (d *DHT) Replicas(ctx context.Context, key string) (values [][]byte, asked int, err error) {
	d.waitRoutingTable(ctx)
	// A lookup that meets dead nodes can wait long on their dials: take
	// the closest it found by closestTimeout.
	lctx, cancel := context.WithTimeout(ctx, closestTimeout)
	closest, err := d.kad.GetClosestPeers(lctx, key)
	cancel()
	if err != nil && ctx.Err() != nil {
		return nil, 0, fmt.Errorf("dht closest peers of %q: %w", key, err)
	}
	// Alone on the ring (no peers), only this node's store answers. A
	// DHT client is never a replica: its own store holds what it put,
	// which no lookup of others finds.
	closest = slices.DeleteFunc(closest, func(p peer.ID) bool { return p == d.id })
	if d.Serving() {
		closest = append(closest, d.id)
	} else if len(closest) == 0 {
		return nil, 0, fmt.Errorf("dht closest peers of %q: no DHT server answered", key)
	}
	replicas := kb.SortClosestPeers(closest, kb.ConvertKey(key))
	replicas = replicas[:min(len(replicas), d.kad.BucketSize())]
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range replicas {
		asked++
		if p == d.id {
			if v, err := d.local(ctx, key); err == nil && v != nil {
				mu.Lock()
				values = append(values, v)
				mu.Unlock()
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, replicaTimeout)
			defer cancel()
			rec, _, err := d.pm.GetValue(ctx, p, key)
			if err != nil || rec == nil || string(rec.GetKey()) != key {
				return
			}
			mu.Lock()
			values = append(values, rec.GetValue())
			mu.Unlock()
		}()
	}
	wg.Wait()
	return values, asked, nil
}

// waitRoutingTable waits, up to rtWait, for the routing table to know a
// server while this node is connected to peers: a node that has just
// linked has not yet heard from kad-dht which of them serve, and a
// lookup then would ask no one but itself, and call a held address free.
func (d *DHT) waitRoutingTable(ctx context.Context) {
	if d.RoutingTableSize() > 0 || len(d.host.Network().Peers()) == 0 {
		return
	}
	pollUntil(ctx, rtWait, func() bool { return d.RoutingTableSize() > 0 })
}

// pollUntil checks cond every 20 ms until it holds (true), or until
// within has passed or ctx ended (false).
func pollUntil(ctx context.Context, within time.Duration, cond func() bool) bool {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return true
}

// local is the record this node stores for key, if any.
func (d *DHT) local(ctx context.Context, key string) ([]byte, error) {
	buf, err := d.store.Get(ctx, valueKey(key))
	if err != nil {
		return nil, err
	}
	var rec recpb.Record
	if err := proto.Unmarshal(buf, &rec); err != nil || string(rec.GetKey()) != key {
		return nil, errors.New("malformed stored record")
	}
	return rec.GetValue(), nil
}

// LocalRecords returns the values of the records this node stores whose
// keys are in namespace ns ("lease" for "/lease/..."): what it holds as a
// replica.
func (d *DHT) LocalRecords(ctx context.Context, ns string) ([][]byte, error) {
	res, err := d.store.Query(ctx, query.Query{Prefix: "/" + ns})
	if err != nil {
		return nil, err
	}
	defer res.Close()
	var out [][]byte
	for e := range res.Next() {
		if e.Error != nil {
			return out, e.Error
		}
		var rec recpb.Record
		if proto.Unmarshal(e.Value, &rec) == nil {
			out = append(out, rec.GetValue())
		}
	}
	return out, nil
}

// RoutingTableSize is how many DHT servers this node knows.
func (d *DHT) RoutingTableSize() int { return d.kad.RoutingTable().Size() }

// BucketSize is k, how many nodes hold each record.
func (d *DHT) BucketSize() int { return d.kad.BucketSize() }

// Close stops the DHT.
func (d *DHT) Close() error {
	err := d.kad.Close()
	d.reach.Close()
	return err
}

// valueKey is where kad-dht's value store keeps the record for key: under
// its namespace, the key in base32 (records/value_store.go, v0.42).
func valueKey(key string) ds.Key {
	ns, _, err := record.SplitKey(key)
	if err != nil {
		ns = ""
	}
	return ds.NewKey(ns + "/" + base32.RawStdEncoding.EncodeToString([]byte(key)))
}

// admittingStore is the DHT's datastore, with the Admit hook in front of
// every record stored. kad-dht's value store holds a lock per key around
// its read of the old record and its Put, so the hook sees what it
// replaces.
type admittingStore struct {
	ds.Batching
	admit   func(key string, existing, incoming []byte) error
	refused atomic.Uint64
}

func (s *admittingStore) Put(ctx context.Context, k ds.Key, value []byte) error {
	if s.admit != nil {
		var rec recpb.Record
		if err := proto.Unmarshal(value, &rec); err == nil && len(rec.GetKey()) > 0 {
			var existing []byte
			if buf, err := s.Batching.Get(ctx, k); err == nil {
				var old recpb.Record
				if proto.Unmarshal(buf, &old) == nil && string(old.GetKey()) == string(rec.GetKey()) {
					existing = old.GetValue()
				}
			}
			if err := s.admit(string(rec.GetKey()), existing, rec.GetValue()); err != nil {
				s.refused.Add(1)
				return fmt.Errorf("%w: %w", ErrRefused, err)
			}
		}
	}
	return s.Batching.Put(ctx, k, value)
}
