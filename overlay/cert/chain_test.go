package cert

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// fixture: an owner, a site delegate, an enrollment key below it, and a
// node; "now" is ten days into every certificate's year.
type fixture struct {
	t                         *testing.T
	owner, site, enroll, node crypto.PrivKey
	other                     crypto.PrivKey
}

func newFixture(t *testing.T) *fixture {
	return &fixture{t: t, owner: newKey(t), site: newKey(t), enroll: newKey(t), node: newKey(t), other: newKey(t)}
}

var now = t0.AddDate(0, 0, 10)

// issue signs a namespace certificate of kind for subject with issuer,
// after edit.
func (f *fixture) issue(issuer crypto.PrivKey, kind Kind, subject crypto.PrivKey, edit ...func(*Cert)) Cert {
	c := nsCert(kind, subject)
	for _, e := range edit {
		e(&c)
	}
	return mustIssue(f.t, issuer, c)
}

// chain1, chain2 and chain3 are valid chains of each length.
func (f *fixture) chain1() []Cert { return []Cert{f.issue(f.owner, Member, f.node)} }

func (f *fixture) chain2() []Cert {
	return []Cert{f.issue(f.enroll, Member, f.node), f.issue(f.owner, Delegate, f.enroll)}
}

func (f *fixture) chain3() []Cert {
	return []Cert{f.issue(f.enroll, Member, f.node), f.issue(f.site, Delegate, f.enroll), f.issue(f.owner, Delegate, f.site)}
}

func expires(at time.Time) func(*Cert) { return func(c *Cert) { c.NotAfter = at } }

func TestVerify(t *testing.T) {
	type check struct {
		chain   []Cert
		root    crypto.PubKey // default: the owner's
		noRoot  bool
		subject peer.ID // default: the node's
		scope   Scope   // default: Namespace
		name    string  // default: "lab"
		revoked []Serial
	}
	for _, tc := range []struct {
		name string
		make func(f *fixture) check
		want error  // nil: valid
		at   string // in the error: which certificate failed
	}{
		{name: "owner admits the node", make: func(f *fixture) check { return check{chain: f.chain1()} }},
		{name: "through an enrollment key", make: func(f *fixture) check { return check{chain: f.chain2()} }},
		{name: "through two delegates", make: func(f *fixture) check { return check{chain: f.chain3()} }},
		{name: "ring admission", make: func(f *fixture) check {
			ring := func(c *Cert) { c.Scope, c.Name, c.Subnet, c.LeaseTime = Ring, "prod", netip.Prefix{}, 0 }
			return check{chain: []Cert{f.issue(f.enroll, Member, f.node, ring), f.issue(f.owner, Delegate, f.enroll, ring)}, scope: Ring, name: "prod"}
		}},
		{name: "valid up to its last second", make: func(f *fixture) check {
			return check{chain: []Cert{f.issue(f.owner, Member, f.node, expires(now.Add(time.Second)))}}
		}},

		{name: "wrong root", want: ErrUntrusted, at: "certificate 1 of 1", make: func(f *fixture) check {
			return check{chain: f.chain1(), root: f.other.GetPublic()}
		}},
		{name: "wrong root above a delegate", want: ErrUntrusted, at: "certificate 2 of 2", make: func(f *fixture) check {
			return check{chain: f.chain2(), root: f.other.GetPublic()}
		}},
		{name: "signed by a key the chain does not hold", want: ErrUntrusted, at: "certificate 1 of 2", make: func(f *fixture) check {
			return check{chain: []Cert{f.issue(f.other, Member, f.node), f.issue(f.owner, Delegate, f.enroll)}}
		}},
		{name: "tampered name", want: ErrUntrusted, make: func(f *fixture) check {
			c := f.chain1()
			c[0].Name = "lab2"
			return check{chain: c, name: "lab2"}
		}},
		{name: "tampered subnet", want: ErrUntrusted, make: func(f *fixture) check {
			c := f.chain1()
			c[0].Subnet = netip.MustParsePrefix("10.0.0.0/8")
			return check{chain: c}
		}},
		{name: "tampered expiry", want: ErrUntrusted, make: func(f *fixture) check {
			c := f.chain1()
			c[0].NotAfter = c[0].NotAfter.AddDate(10, 0, 0)
			return check{chain: c}
		}},
		{name: "tampered subject", want: ErrUntrusted, make: func(f *fixture) check {
			c := f.chain1()
			c[0].Subject = f.other.GetPublic()
			return check{chain: c, subject: peerOf(f.t, f.other)}
		}},
		{name: "tampered kind", want: ErrUntrusted, make: func(f *fixture) check {
			c := []Cert{f.issue(f.enroll, Member, f.node), f.issue(f.owner, Member, f.enroll)}
			c[1].Kind = Delegate
			return check{chain: c}
		}},
		{name: "tampered signature", want: ErrUntrusted, make: func(f *fixture) check {
			c := f.chain2()
			c[1].Signature[0] ^= 1
			return check{chain: c}
		}},

		{name: "expired leaf", want: ErrExpired, at: "certificate 1 of 2", make: func(f *fixture) check {
			return check{chain: []Cert{f.issue(f.enroll, Member, f.node, expires(now)), f.issue(f.owner, Delegate, f.enroll)}}
		}},
		{name: "expired delegate", want: ErrExpired, at: "certificate 2 of 2", make: func(f *fixture) check {
			at := expires(now.Add(-time.Hour))
			return check{chain: []Cert{f.issue(f.enroll, Member, f.node, at), f.issue(f.owner, Delegate, f.enroll, at)}}
		}},
		{name: "not yet valid", want: ErrNotYetValid, make: func(f *fixture) check {
			return check{chain: []Cert{f.issue(f.owner, Member, f.node, func(c *Cert) { c.NotBefore = now.Add(time.Minute) })}}
		}},
		{name: "delegate widens the leaf's validity", want: ErrUntrusted, at: "certificate 1 of 2", make: func(f *fixture) check {
			return check{chain: []Cert{f.issue(f.enroll, Member, f.node), f.issue(f.owner, Delegate, f.enroll, expires(now.AddDate(0, 0, 30)))}}
		}},

		{name: "wrong scope", want: ErrScope, make: func(f *fixture) check { return check{chain: f.chain2(), scope: Ring} }},
		{name: "wrong name", want: ErrScope, make: func(f *fixture) check { return check{chain: f.chain2(), name: "other"} }},
		{name: "delegate for another namespace", want: ErrScope, at: "certificate 2 of 2", make: func(f *fixture) check {
			other := func(c *Cert) { c.Name = "other" }
			return check{chain: []Cert{f.issue(f.enroll, Member, f.node), f.issue(f.owner, Delegate, f.enroll, other)}}
		}},
		{name: "delegate changes the subnet", want: ErrScope, at: "certificate 1 of 2", make: func(f *fixture) check {
			wide := func(c *Cert) { c.Subnet = netip.MustParsePrefix("10.0.0.0/8") }
			return check{chain: []Cert{f.issue(f.enroll, Member, f.node, wide), f.issue(f.owner, Delegate, f.enroll)}}
		}},
		{name: "delegate changes the lease time", want: ErrScope, make: func(f *fixture) check {
			long := func(c *Cert) { c.LeaseTime = 24 * time.Hour }
			return check{chain: []Cert{f.issue(f.enroll, Member, f.node, long), f.issue(f.owner, Delegate, f.enroll)}}
		}},

		{name: "member used as issuer", want: ErrUntrusted, at: "certificate 1 of 2", make: func(f *fixture) check {
			return check{chain: []Cert{f.issue(f.enroll, Member, f.node), f.issue(f.owner, Member, f.enroll)}}
		}},
		{name: "member in the middle", want: ErrUntrusted, at: "certificate 1 of 3", make: func(f *fixture) check {
			return check{chain: []Cert{f.issue(f.enroll, Member, f.node), f.issue(f.site, Member, f.enroll), f.issue(f.owner, Delegate, f.site)}}
		}},
		{name: "delegate certificate as the leaf", want: ErrUntrusted, make: func(f *fixture) check {
			return check{chain: []Cert{f.issue(f.owner, Delegate, f.node)}}
		}},
		{name: "chain too long", want: ErrUntrusted, make: func(f *fixture) check {
			c := append([]Cert{f.issue(f.other, Member, f.node), f.issue(f.enroll, Delegate, f.other)}, f.chain3()[1:]...)
			return check{chain: c}
		}},
		{name: "empty chain", want: ErrUntrusted, make: func(f *fixture) check { return check{chain: []Cert{}} }},
		{name: "no root", want: ErrUntrusted, make: func(f *fixture) check {
			return check{chain: f.chain1(), noRoot: true}
		}},
		{name: "another peer's chain", want: ErrSubject, make: func(f *fixture) check {
			return check{chain: f.chain2(), subject: peerOf(f.t, f.other)}
		}},

		{name: "revoked leaf", want: ErrRevoked, at: "certificate 1 of 2", make: func(f *fixture) check {
			c := f.chain2()
			return check{chain: c, revoked: []Serial{c[0].Serial}}
		}},
		{name: "revoked delegate", want: ErrRevoked, at: "certificate 2 of 2", make: func(f *fixture) check {
			c := f.chain2()
			return check{chain: c, revoked: []Serial{c[1].Serial}}
		}},
		{name: "other serials revoked", make: func(f *fixture) check {
			return check{chain: f.chain3(), revoked: []Serial{NewSerial(), NewSerial()}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			c := tc.make(f)
			root, subject, scope, name := f.owner.GetPublic(), peerOf(t, f.node), Namespace, "lab"
			switch {
			case c.noRoot:
				root = nil
			case c.root != nil:
				root = c.root
			}
			if c.subject != "" {
				subject = c.subject
			}
			if c.scope != 0 {
				scope = c.scope
			}
			if c.name != "" {
				name = c.name
			}
			revoked := func(s Serial) bool {
				for _, r := range c.revoked {
					if r == s {
						return true
					}
				}
				return false
			}
			leaf, err := Verify(c.chain, root, subject, scope, name, now, revoked)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if !sameCert(leaf, c.chain[0]) {
					t.Fatal("returned another certificate than the leaf")
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.at) {
				t.Fatalf("err %q does not say %q", err, tc.at)
			}
		})
	}
}

// A chain lasts only as long as all its certificates.
func TestVerifyExpiry(t *testing.T) {
	f := newFixture(t)
	end := now.AddDate(0, 0, 5)
	chain := []Cert{f.issue(f.enroll, Member, f.node), f.issue(f.owner, Delegate, f.enroll)}
	chain[0] = f.issue(f.enroll, Member, f.node, expires(end))
	for at, want := range map[time.Time]error{
		t0.Add(-time.Second):  ErrNotYetValid,
		t0:                    nil,
		end.Add(-time.Second): nil,
		end:                   ErrExpired,
		t0.AddDate(2, 0, 0):   ErrExpired,
	} {
		if _, err := Verify(chain, f.owner.GetPublic(), peerOf(t, f.node), Namespace, "lab", at, nil); !errors.Is(err, want) {
			t.Errorf("at %v: err %v, want %v", at, err, want)
		}
	}
}

func TestVerifyDelegate(t *testing.T) {
	f := newFixture(t)
	one := []Cert{f.issue(f.owner, Delegate, f.enroll)}
	two := []Cert{f.issue(f.site, Delegate, f.enroll), f.issue(f.owner, Delegate, f.site)}
	three := []Cert{f.issue(f.enroll, Delegate, f.node), two[0], two[1]}
	root := f.owner.GetPublic()
	for _, tc := range []struct {
		name  string
		chain []Cert
		key   crypto.PubKey
		want  error
	}{
		{"owner's delegate", one, f.enroll.GetPublic(), nil},
		{"delegate's delegate", two, f.enroll.GetPublic(), nil},
		{"no room below", three, f.node.GetPublic(), ErrUntrusted},
		{"another key", one, f.other.GetPublic(), ErrSubject},
		{"member certificate", f.chain1(), f.node.GetPublic(), ErrUntrusted},
	} {
		_, err := VerifyDelegate(tc.chain, root, tc.key, Namespace, "lab", now, nil)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
		}
	}
}
