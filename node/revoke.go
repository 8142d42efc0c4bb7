package node

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"

	"github.com/ringnet/ringnet/overlay/cert"
)

// Revocations spread through the DHT. The owner writes one with `ringnet
// ring|namespace revoke` into a file that a node names in its config
// (revocations, in the ring and namespace sections); that node adds it to
// the DHT record of its ring's or namespace's revocations. Every node
// reads those records every revokePoll and honours what they hold: peers'
// ring proofs are checked again every 10 s (overlay), lease records each
// time they are read, and bindings of addresses every 30 s, so a revoked
// certificate stops working within a minute.
//
// The record's key names the owner key's hash (like a closed namespace's
// ID); its value is the owner's public key, then the revocations, each
// signed by that key, so that any replica can check it.
const revokePoll = 20 * time.Second

// revokeRepublish is how often a node that knows revocations puts them in
// the DHT again: replicas forget records after 48 hours, and the owner's
// file may be long gone from the node that first published it.
const revokeRepublish = 6 * time.Hour

// revocationKey is the DHT key of an owner's revocations.
func revocationKey(scope cert.Scope, name string, root crypto.PubKey) (string, error) {
	id, err := namespaceID(name, root)
	if err != nil {
		return "", err
	}
	return cert.RevocationKey(scope, id), nil
}

// encodeRevocationRecord is a revocation record's value.
func encodeRevocationRecord(root crypto.PubKey, rs []cert.Revocation) ([]byte, error) {
	raw, err := crypto.MarshalPublicKey(root)
	if err != nil {
		return nil, err
	}
	list, err := cert.EncodeRevocations(rs)
	if err != nil {
		return nil, err
	}
	b := binary.BigEndian.AppendUint16(nil, uint16(len(raw)))
	b = append(b, raw...)
	return append(b, list...), nil
}

// parseRevocationRecord checks a revocation record for key: the owner key
// must be the one the key names, and every revocation signed by it.
func parseRevocationRecord(key string, value []byte) ([]cert.Revocation, error) {
	if len(value) < 2 {
		return nil, errors.New("revocation record too short")
	}
	n := int(binary.BigEndian.Uint16(value))
	if len(value) < 2+n {
		return nil, errors.New("revocation record truncated")
	}
	root, err := crypto.UnmarshalPublicKey(value[2 : 2+n])
	if err != nil {
		return nil, fmt.Errorf("revocation record owner key: %w", err)
	}
	rest := strings.TrimPrefix(key, "/revoke/")
	scopeText, id, ok := strings.Cut(rest, "/")
	if !ok {
		return nil, fmt.Errorf("revocation key %q", key)
	}
	scope, err := cert.ParseScope(scopeText)
	if err != nil {
		return nil, err
	}
	dot := strings.LastIndexByte(id, '.')
	if dot < 0 {
		return nil, fmt.Errorf("revocation key %q names no owner key", key)
	}
	if want, err := revocationKey(scope, id[:dot], root); err != nil || want != key {
		return nil, fmt.Errorf("revocation record for %q carries another owner's key", key)
	}
	rs, err := cert.ParseRevocations(value[2+n:])
	if err != nil {
		return nil, err
	}
	list := cert.NewRevocationList(scope, id[:dot], root)
	for _, r := range rs {
		if _, err := list.Add(r); err != nil {
			return nil, err
		}
	}
	return rs, nil
}

// revocationValidator is the DHT's record.Validator for "/revoke/" keys:
// a valid record is one whose every revocation the owner signed; of two,
// the one that revokes more wins.
type revocationValidator struct{}

func (revocationValidator) Validate(key string, value []byte) error {
	_, err := parseRevocationRecord(key, value)
	return err
}

func (revocationValidator) Select(key string, values [][]byte) (int, error) {
	best, most := -1, -1
	for i, v := range values {
		rs, err := parseRevocationRecord(key, v)
		if err == nil && len(rs) > most {
			best, most = i, len(rs)
		}
	}
	if best < 0 {
		return 0, errors.New("no valid revocation record")
	}
	return best, nil
}

// revocationSource is one owner's revocations as this node follows them.
type revocationSource struct {
	scope cert.Scope
	list  *cert.RevocationList
	key   string
	file  string // revocations to publish; "" for none
	root  crypto.PubKey
	last  []byte    // the file as last read
	put   time.Time // when this node last published
}

// followRevocations keeps the node's revocation lists current until ctx
// ends: it publishes the configured files and reads the DHT's records.
func (n *Node) followRevocations(ctx context.Context) {
	var srcs []*revocationSource
	add := func(scope cert.Scope, name string, root crypto.PubKey, list *cert.RevocationList, file string) {
		key, err := revocationKey(scope, name, root)
		if err != nil {
			n.log.Error("revocations", "err", err)
			return
		}
		if file != "" {
			file = statePath(n.cfg, file)
		}
		srcs = append(srcs, &revocationSource{scope: scope, list: list, key: key, file: file, root: root})
	}
	if !n.trust.ringOpen {
		add(cert.Ring, n.trust.ringName, n.trust.ringRoot, n.trust.ringRevs, n.cfg.Ring.Revocations)
	}
	if !n.trust.nsOpen {
		add(cert.Namespace, n.trust.nsName, n.trust.nsRoot, n.trust.nsRevs, n.cfg.Namespace.Revocations)
	}
	if len(srcs) == 0 {
		return
	}
	t := time.NewTicker(revokePoll)
	defer t.Stop()
	for {
		for _, s := range srcs {
			n.pollRevocations(ctx, s)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (n *Node) pollRevocations(ctx context.Context, s *revocationSource) {
	d := n.ov.DHT()
	fresh := false
	if s.file != "" {
		text, err := os.ReadFile(s.file)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			n.log.Warn("revocation file", "file", s.file, "err", err)
		case !bytes.Equal(text, s.last):
			s.last = text
			rs, err := cert.ParseRevocationsText(text)
			if err != nil {
				n.log.Warn("revocation file", "file", s.file, "err", err)
				break
			}
			for _, r := range rs {
				if added, err := s.list.Add(r); err != nil {
					n.log.Warn("revocation refused", "file", s.file, "serial", r.Serial, "err", err)
				} else if added {
					fresh = true
				}
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if v, err := d.Get(ctx, s.key); err == nil {
		rs, err := parseRevocationRecord(s.key, v)
		if err != nil {
			n.log.Warn("revocation record", "err", err)
		}
		for _, r := range rs {
			if added, _ := s.list.Add(r); added {
				n.log.Info("certificate revoked", "scope", s.scope, "serial", r.Serial)
			}
		}
		// The DHT lacks some we know: publish the union.
		fresh = fresh || len(rs) < s.list.Len()
	}
	if s.list.Len() > 0 && time.Since(s.put) > revokeRepublish {
		fresh = true
	}
	if fresh {
		s.put = time.Now()
		v, err := encodeRevocationRecord(s.root, s.list.Revocations())
		if err == nil {
			err = d.Put(ctx, s.key, v)
		}
		if err != nil {
			n.log.Warn("publishing revocations", "err", err)
			return
		}
		n.log.Info("revocations published", "scope", s.scope, "count", s.list.Len())
	}
}
