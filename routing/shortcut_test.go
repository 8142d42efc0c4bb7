package routing

import (
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

func TestShortcutScoreDecays(t *testing.T) {
	s := NewShortcuts(DefaultShortcutPolicy)
	t0 := time.Unix(1000, 0)
	id := testID(1)
	s.Count(id, 40, t0)
	if got := s.Score(id, t0.Add(DefaultShortcutPolicy.HalfLife)); got < 19.99 || got > 20.01 {
		t.Fatalf("score after one half-life: %v, want 20", got)
	}
	s.Count(id, 0, t0.Add(time.Hour)) // no packets: nothing changes
	if s.Score(id, t0) != 40 {
		t.Fatal("a count of zero changed the score")
	}
}

func TestShortcutWantedPastTheThreshold(t *testing.T) {
	p := DefaultShortcutPolicy
	s := NewShortcuts(p)
	now := time.Unix(1000, 0)
	busy, quiet := testID(1), testID(2)
	s.Count(quiet, uint64(p.Threshold)-1, now)
	if w := s.Want(now); len(w) != 0 {
		t.Fatalf("below the threshold: want %v", w)
	}
	s.Count(busy, uint64(p.Threshold)+5, now)
	if w := s.Want(now); !slices.Equal(w, []peer.ID{busy}) {
		t.Fatalf("want %v, expected only the busy peer", w)
	}
	s.Linked(busy, now)
	if w := s.Want(now); len(w) != 0 {
		t.Fatalf("a linked peer is wanted again: %v", w)
	}
}

func TestShortcutFailuresBackOff(t *testing.T) {
	p := DefaultShortcutPolicy
	s := NewShortcuts(p)
	now := time.Unix(1000, 0)
	id := testID(1)
	for i := range 3 {
		s.Count(id, 1000, now)
		if w := s.Want(now); len(w) != 1 {
			t.Fatalf("try %d: not wanted", i)
		}
		s.Failed(id, now)
		wait := p.RetryAfter << i
		if w := s.Want(now.Add(wait - time.Millisecond)); len(w) != 0 {
			t.Fatalf("after failure %d, wanted again before %v", i+1, wait)
		}
		now = now.Add(wait)
	}
	if s.Failures(id) != 3 {
		t.Fatalf("failures %d, want 3", s.Failures(id))
	}
	s.Failed(id, now)
	s.Count(id, 1000, now.Add(p.MaxRetryAfter))
	if w := s.Want(now.Add(p.MaxRetryAfter)); len(w) != 0 {
		t.Fatalf("asked again after %d failures (MaxTries %d)", s.Failures(id), p.MaxTries)
	}
	p.MaxTries = 0
	s = NewShortcuts(p)
	for range 20 {
		s.Failed(id, now)
	}
	s.Count(id, 1000, now.Add(p.MaxRetryAfter))
	if w := s.Want(now.Add(p.MaxRetryAfter)); len(w) != 1 {
		t.Fatal("the back-off grew past MaxRetryAfter")
	}
}

func TestShortcutIdleAndCapDrop(t *testing.T) {
	p := DefaultShortcutPolicy
	p.Max = 2
	s := NewShortcuts(p)
	now := time.Unix(1000, 0)
	a, b, c := testID(1), testID(2), testID(3)
	for i, id := range []peer.ID{a, b, c} {
		s.Count(id, uint64(100*(i+1)), now)
		s.Linked(id, now)
	}
	// Over the cap by one: the least used goes.
	if got := s.Drop(now); !slices.Equal(got, []peer.ID{a}) {
		t.Fatalf("dropped %v, want the least used", got)
	}
	if w := s.Want(now); len(w) != 0 {
		t.Fatalf("at the cap, wanted %v", w)
	}
	// b keeps sending, c goes quiet.
	later := now.Add(p.IdleTimeout)
	s.Count(b, 1, later.Add(-time.Second))
	if got := s.Drop(later); !slices.Equal(got, []peer.ID{c}) {
		t.Fatalf("dropped %v, want the idle one", got)
	}
	if w := s.Want(later); len(w) != 0 {
		t.Fatalf("a dropped shortcut is wanted again without new traffic: %v", w)
	}
	s.Forget(later.Add(time.Hour))
	if len(s.peers) != 1 {
		t.Fatalf("forgot down to %d peers, want the linked one", len(s.peers))
	}
}
