package routing

import (
	"math"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// ShortcutPolicy decides when two nodes that talk over the ring should
// link directly, as IPOP's shortcut connections did. Every packet a node
// sends to or receives from a peer over the ring counts toward the peer's
// traffic score, which decays with a half-life; a score above Threshold
// asks for a shortcut. A shortcut that carries nothing for IdleTimeout is
// dropped, and a node keeps at most Max of them, dropping the least used.
type ShortcutPolicy struct {
	// Threshold is the score, in packets, that asks for a shortcut.
	Threshold float64
	// HalfLife is how fast the score forgets.
	HalfLife time.Duration
	// IdleTimeout drops a shortcut that carried no packet for this long.
	IdleTimeout time.Duration
	// Max bounds the shortcuts a node keeps.
	Max int
	// RetryAfter is how long a peer whose shortcut failed to form is left
	// alone, doubled with each failure up to MaxRetryAfter.
	RetryAfter, MaxRetryAfter time.Duration
	// MaxTries stops asking a peer after this many failures in a row:
	// a shortcut that cannot form (NATs that map every destination anew
	// on both sides) is not asked for again until the peer is forgotten.
	MaxTries int
}

// DefaultShortcutPolicy: a flow of about 10 packets a second asks for a
// shortcut within a second or two (a ping every second does after 20 s
// or so), a shortcut idle for 2 minutes goes, and up to 8 are kept, which
// leaves room under MaxLinks for the ring's own links.
var DefaultShortcutPolicy = ShortcutPolicy{
	Threshold:     20,
	HalfLife:      10 * time.Second,
	IdleTimeout:   2 * time.Minute,
	Max:           8,
	RetryAfter:    5 * time.Second,
	MaxRetryAfter: 5 * time.Minute,
	MaxTries:      4,
}

// Shortcuts tracks the traffic scores and the shortcuts of one node.
// It is pure state, with no I/O and no locking.
type Shortcuts struct {
	p     ShortcutPolicy
	peers map[peer.ID]*shortcutState
}

type shortcutState struct {
	score    float64
	at       time.Time // when score was last brought up to date
	lastUsed time.Time // last packet
	linked   bool      // a shortcut exists
	failures int
	retryAt  time.Time
}

// NewShortcuts returns a tracker with policy p.
func NewShortcuts(p ShortcutPolicy) *Shortcuts {
	return &Shortcuts{p: p, peers: make(map[peer.ID]*shortcutState)}
}

func (s *Shortcuts) state(id peer.ID) *shortcutState {
	st := s.peers[id]
	if st == nil {
		st = &shortcutState{}
		s.peers[id] = st
	}
	return st
}

// decayed returns st's score at now.
func (s *Shortcuts) decayed(st *shortcutState, now time.Time) float64 {
	if st.at.IsZero() || !now.After(st.at) {
		return st.score
	}
	return st.score * math.Exp2(-float64(now.Sub(st.at))/float64(s.p.HalfLife))
}

// Count records packets sent to or received from id since the last
// count.
func (s *Shortcuts) Count(id peer.ID, packets uint64, now time.Time) {
	if packets == 0 {
		return
	}
	st := s.state(id)
	st.score = s.decayed(st, now) + float64(packets)
	st.at = now
	st.lastUsed = now
}

// Score returns id's traffic score at now.
func (s *Shortcuts) Score(id peer.ID, now time.Time) float64 {
	if st := s.peers[id]; st != nil {
		return s.decayed(st, now)
	}
	return 0
}

// Want returns the peers to ask for a shortcut now: their score is over
// the threshold, they have none, and no failure holds them back. Peers
// with the highest score come first, and no more than the room under
// Max.
func (s *Shortcuts) Want(now time.Time) []peer.ID {
	room := s.p.Max
	var out []peer.ID
	for id, st := range s.peers {
		if st.linked {
			room--
			continue
		}
		if now.Before(st.retryAt) || s.decayed(st, now) < s.p.Threshold || (s.p.MaxTries > 0 && st.failures >= s.p.MaxTries) {
			continue
		}
		out = append(out, id)
	}
	slices.SortFunc(out, func(a, b peer.ID) int {
		sa, sb := s.Score(a, now), s.Score(b, now)
		switch {
		case sa > sb:
			return -1
		case sa < sb:
			return 1
		}
		return 0
	})
	return out[:max(0, min(room, len(out)))]
}

// Linked records that a shortcut to id formed.
func (s *Shortcuts) Linked(id peer.ID, now time.Time) {
	st := s.state(id)
	st.linked, st.failures, st.retryAt = true, 0, time.Time{}
	st.lastUsed = now
}

// Unlinked records that the shortcut to id is gone (dropped, or its link
// failed).
func (s *Shortcuts) Unlinked(id peer.ID) {
	if st := s.peers[id]; st != nil {
		st.linked = false
	}
}

// Failed records that a shortcut to id did not form, and holds id back
// for a while, longer with each failure in a row.
func (s *Shortcuts) Failed(id peer.ID, now time.Time) {
	st := s.state(id)
	st.failures++
	wait := s.p.RetryAfter << min(st.failures-1, 16)
	st.retryAt = now.Add(min(wait, s.p.MaxRetryAfter))
}

// Failures returns how many times in a row a shortcut to id failed.
func (s *Shortcuts) Failures(id peer.ID) int {
	if st := s.peers[id]; st != nil {
		return st.failures
	}
	return 0
}

// Drop returns the shortcuts to let go now: those idle for IdleTimeout,
// and, above Max, the least used. It marks them unlinked.
func (s *Shortcuts) Drop(now time.Time) []peer.ID {
	var linked, out []peer.ID
	for id, st := range s.peers {
		if !st.linked {
			continue
		}
		if now.Sub(st.lastUsed) >= s.p.IdleTimeout {
			out = append(out, id)
			continue
		}
		linked = append(linked, id)
	}
	if over := len(linked) - s.p.Max; over > 0 {
		slices.SortFunc(linked, func(a, b peer.ID) int {
			sa, sb := s.Score(a, now), s.Score(b, now)
			switch {
			case sa < sb:
				return -1
			case sa > sb:
				return 1
			}
			return 0
		})
		out = append(out, linked[:over]...)
	}
	for _, id := range out {
		// The peer earns its next shortcut with new traffic.
		st := s.peers[id]
		st.linked, st.score = false, 0
	}
	return out
}

// Forget drops what is known of peers that are neither linked nor
// scored above a tenth of a packet, so the tracker stays small.
func (s *Shortcuts) Forget(now time.Time) {
	for id, st := range s.peers {
		if !st.linked && s.decayed(st, now) < 0.1 && !now.Before(st.retryAt) && (s.p.MaxTries == 0 || st.failures < s.p.MaxTries) {
			delete(s.peers, id)
		}
	}
}
