package main

// Certificates for ring admission and namespace membership (package
// overlay/cert): owner keys, admitting peers, delegating enrollment keys,
// revoking, and showing what a file holds.
//
// Files:
//
//	DIR/ring-NAME.key, DIR/namespace-NAME.key
//	    the owner key: a libp2p-marshalled Ed25519 private key, mode 0600
//	DIR/ring-NAME.toml, DIR/namespace-NAME.toml
//	    what the owner key owns (scope, name, subnet, lease, owner public
//	    key): admit, delegate and revoke read it beside the key they are
//	    given when that key is an owner's
//	certificate chain files
//	    PEM "RINGNET CERTIFICATE" blocks, leaf first; a delegate key comes
//	    with one (-chain), which says what the key may issue
//	revocation list files
//	    PEM "RINGNET REVOCATION" blocks; revoke appends one

import (
	"bytes"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringnet/ringnet/overlay/cert"
)

const (
	// clockSkew backdates every certificate, so that a node whose clock
	// is a little behind the issuer's accepts it at once.
	clockSkew = 5 * time.Minute
	// maxDays keeps validity far from time arithmetic's limits.
	maxDays = 100 * 365
)

// scopeCommand runs "ringnet ring ..." and "ringnet namespace ...".
func scopeCommand(scope cert.Scope, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageError{fmt.Errorf("%v: no subcommand", scope)}
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "create":
		return createCmd(scope, args, stdout, stderr)
	case "admit":
		return issueCmd(scope, cert.Member, args, stdout)
	case "delegate":
		return issueCmd(scope, cert.Delegate, args, stdout)
	case "revoke":
		return revokeCmd(scope, args, stdout)
	}
	fmt.Fprint(stderr, usage)
	return usageError{fmt.Errorf("%v: unknown subcommand %q", scope, sub)}
}

// prefix puts the command's name before a failure.
func prefix(cmd string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", cmd, err)
}

// ownerSettings is the file beside an owner key: what the key owns.
type ownerSettings struct {
	Scope  string `toml:"scope"`
	Name   string `toml:"name"`
	Subnet string `toml:"subnet,omitempty"`
	Lease  string `toml:"lease,omitempty"`
	Owner  string `toml:"owner"` // the root public key, as node configs name it
}

func settingsPath(keyPath string) string { return strings.TrimSuffix(keyPath, ".key") + ".toml" }

func createCmd(scope cert.Scope, args []string, stdout, stderr io.Writer) error {
	cmd := scope.String() + " create"
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	name := fs.String("name", "", "the "+scope.String()+"'s `name`")
	out := fs.String("out", "", "`directory` for the owner key and its settings")
	var subnet, lease *string
	if scope == cert.Namespace {
		subnet = fs.String("subnet", "", "the namespace's virtual `prefix`, e.g. 10.128.0.0/16")
		lease = fs.String("lease", "", "address lease `time`, e.g. 1h")
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return prefix(cmd, create(scope, *name, subnet, lease, *out, stdout, stderr))
}

// create makes an owner key and its settings file, and prints the public
// key, alone on stdout so that scripts can take it.
func create(scope cert.Scope, name string, subnet, lease *string, dir string, stdout, stderr io.Writer) error {
	if dir == "" {
		return usageError{errors.New("-out is required")}
	}
	if err := cert.CheckName(name); err != nil {
		return usageError{err}
	}
	key, err := cert.GenerateKey()
	if err != nil {
		return err
	}
	owner, err := cert.FormatPublicKey(key.GetPublic())
	if err != nil {
		return err
	}
	s := ownerSettings{Scope: scope.String(), Name: name, Owner: owner}
	if scope == cert.Namespace {
		p, err := netip.ParsePrefix(*subnet)
		if err != nil {
			return usageError{fmt.Errorf("-subnet: %w", err)}
		}
		d, err := time.ParseDuration(*lease)
		if err != nil {
			return usageError{fmt.Errorf("-lease: %w", err)}
		}
		if err := cert.CheckNamespace(p, d); err != nil {
			return usageError{err}
		}
		s.Subnet, s.Lease = p.String(), d.String()
	}
	var text bytes.Buffer
	fmt.Fprintf(&text, "# The %v %q: what the owner key beside this file signs.\n", scope, name)
	fmt.Fprintf(&text, "# Node configs name the owner public key as the %v's root.\n", scope)
	if err := toml.NewEncoder(&text).Encode(s); err != nil {
		return fmt.Errorf("settings: %w", err)
	}

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	keyPath := filepath.Join(dir, scope.String()+"-"+name+".key")
	sPath := settingsPath(keyPath)
	// The key is written last but one and never replaced, so a second
	// create for the same name fails before touching anything.
	if _, err := os.Lstat(sPath); err == nil {
		return fmt.Errorf("settings %s: %w", sPath, fs.ErrExist)
	}
	if err := cert.WriteKeyFile(keyPath, key); err != nil {
		return err
	}
	if err := writeFile(sPath, text.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "owner key: %s (keep it secret; it signs every certificate of the %v)\n", keyPath, scope)
	fmt.Fprintf(stderr, "settings:  %s\n", sPath)
	fmt.Fprintln(stdout, owner)
	return nil
}

// signer is a key that issues certificates in one scope.
type signer struct {
	key   crypto.PrivKey
	root  crypto.PubKey
	chain []cert.Cert // the delegate's chain, leaf first; nil for the owner
	tmpl  cert.Cert   // scope, name and namespace settings
}

// loadSigner reads a key and what it may sign: from the settings beside
// an owner key, or from a delegate key's chain.
func loadSigner(scope cert.Scope, keyPath, chainPath string, now time.Time) (*signer, error) {
	if keyPath == "" {
		return nil, usageError{errors.New("-key is required")}
	}
	key, err := cert.ReadKeyFile(keyPath)
	if err != nil {
		return nil, err
	}
	if chainPath == "" {
		tmpl, err := readSettings(settingsPath(keyPath), scope, key)
		if err != nil {
			return nil, err
		}
		return &signer{key: key, root: key.GetPublic(), tmpl: tmpl}, nil
	}
	chain, err := readChain(chainPath)
	if err != nil {
		return nil, err
	}
	// The chain's own top issuer stands for the root: this checks that
	// the chain hangs together and is for this key, not that it is
	// trusted, which is for the nodes to say.
	root := chain[len(chain)-1].Issuer
	leaf, err := cert.VerifyDelegate(chain, root, key.GetPublic(), scope, chain[0].Name, now, nil)
	if err != nil {
		return nil, fmt.Errorf("chain %s does not let key %s issue: %w", chainPath, keyPath, err)
	}
	tmpl := cert.Cert{Scope: leaf.Scope, Name: leaf.Name, Subnet: leaf.Subnet, LeaseTime: leaf.LeaseTime}
	return &signer{key: key, root: root, chain: chain, tmpl: tmpl}, nil
}

func readSettings(path string, scope cert.Scope, key crypto.PrivKey) (cert.Cert, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cert.Cert{}, fmt.Errorf("settings %s not found: an owner key needs the settings that %q wrote beside it, a delegate key needs -chain", path, "ringnet "+scope.String()+" create")
	}
	if err != nil {
		return cert.Cert{}, err
	}
	var s ownerSettings
	if _, err := toml.Decode(string(data), &s); err != nil {
		return cert.Cert{}, fmt.Errorf("settings %s: %w", path, err)
	}
	if s.Scope != scope.String() {
		return cert.Cert{}, fmt.Errorf("settings %s are for a %s, not a %v", path, s.Scope, scope)
	}
	owner, err := cert.ParsePublicKey(s.Owner)
	if err != nil {
		return cert.Cert{}, fmt.Errorf("settings %s: owner: %w", path, err)
	}
	if !owner.Equals(key.GetPublic()) {
		return cert.Cert{}, fmt.Errorf("settings %s name another owner key", path)
	}
	tmpl := cert.Cert{Scope: scope, Name: s.Name}
	if err := cert.CheckName(s.Name); err != nil {
		return cert.Cert{}, fmt.Errorf("settings %s: %w", path, err)
	}
	if scope == cert.Namespace {
		if tmpl.Subnet, err = netip.ParsePrefix(s.Subnet); err != nil {
			return cert.Cert{}, fmt.Errorf("settings %s: subnet: %w", path, err)
		}
		if tmpl.LeaseTime, err = time.ParseDuration(s.Lease); err != nil {
			return cert.Cert{}, fmt.Errorf("settings %s: lease: %w", path, err)
		}
		if err := cert.CheckNamespace(tmpl.Subnet, tmpl.LeaseTime); err != nil {
			return cert.Cert{}, fmt.Errorf("settings %s: %w", path, err)
		}
	}
	return tmpl, nil
}

func readChain(path string) ([]cert.Cert, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	chain, err := cert.ParseChainText(data)
	if err != nil {
		return nil, fmt.Errorf("chain %s: %w", path, err)
	}
	return chain, nil
}

// issue signs a certificate of kind for subject, valid from now for days
// but never past the signer's own certificate, and returns the chain it
// heads.
func (s *signer) issue(kind cert.Kind, subject crypto.PubKey, days int, now time.Time) ([]cert.Cert, error) {
	c := s.tmpl
	c.Kind, c.Subject = kind, subject
	c.NotBefore = now.Add(-clockSkew)
	c.NotAfter = now.AddDate(0, 0, days)
	if len(s.chain) > 0 && c.NotAfter.After(s.chain[0].NotAfter) {
		c.NotAfter = s.chain[0].NotAfter
	}
	c, err := cert.Issue(s.key, c)
	if err != nil {
		return nil, err
	}
	return append([]cert.Cert{c}, s.chain...), nil
}

// issueCmd runs admit (kind Member) and delegate (kind Delegate).
func issueCmd(scope cert.Scope, kind cert.Kind, args []string, stdout io.Writer) error {
	sub := "admit"
	if kind == cert.Delegate {
		sub = "delegate"
	}
	cmd := scope.String() + " " + sub
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	keyPath := fs.String("key", "", "owner or delegate key `file`")
	chainPath := fs.String("chain", "", "the delegate key's certificate chain `file` (none for the owner key)")
	days := fs.Int("days", 0, "validity in `days`")
	out := fs.String("out", "", "certificate chain `file` to write")
	var peerText, outKey *string
	if kind == cert.Member {
		peerText = fs.String("peer", "", "the admitted node's peer `ID`")
	} else {
		outKey = fs.String("out-key", "", "`file` for the new enrollment key")
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	err := func() error {
		if *out == "" {
			return usageError{errors.New("-out is required")}
		}
		if *days <= 0 || *days > maxDays {
			return usageError{fmt.Errorf("-days %d: want 1 to %d", *days, maxDays)}
		}
		now := time.Now()
		if kind == cert.Member {
			return admit(scope, *keyPath, *chainPath, *peerText, *days, *out, now, stdout)
		}
		return delegate(scope, *keyPath, *chainPath, *outKey, *days, *out, now, stdout)
	}()
	return prefix(cmd, err)
}

func admit(scope cert.Scope, keyPath, chainPath, peerText string, days int, out string, now time.Time, stdout io.Writer) error {
	if peerText == "" {
		return usageError{errors.New("-peer is required")}
	}
	id, err := peer.Decode(peerText)
	if err != nil {
		return usageError{fmt.Errorf("-peer: %w", err)}
	}
	subject, err := id.ExtractPublicKey()
	if err != nil {
		return usageError{fmt.Errorf("-peer %s: no public key in the peer ID (ringnet peer IDs are Ed25519 keys): %w", id, err)}
	}
	s, err := loadSigner(scope, keyPath, chainPath, now)
	if err != nil {
		return err
	}
	chain, err := s.issue(cert.Member, subject, days, now)
	if err != nil {
		return err
	}
	// Check the result as a node will, before anyone relies on it.
	if _, err := cert.Verify(chain, s.root, id, scope, s.tmpl.Name, now, nil); err != nil {
		return fmt.Errorf("the new chain does not verify: %w", err)
	}
	if err := writeChain(out, chain); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: peer %s is a member of %v %q until %s (serial %v)\n",
		out, id, scope, s.tmpl.Name, chain[0].NotAfter.Format(time.RFC3339), chain[0].Serial)
	return nil
}

func delegate(scope cert.Scope, keyPath, chainPath, outKey string, days int, out string, now time.Time, stdout io.Writer) error {
	if outKey == "" {
		return usageError{errors.New("-out-key is required")}
	}
	s, err := loadSigner(scope, keyPath, chainPath, now)
	if err != nil {
		return err
	}
	key, err := cert.GenerateKey()
	if err != nil {
		return err
	}
	chain, err := s.issue(cert.Delegate, key.GetPublic(), days, now)
	if err != nil {
		return err
	}
	if _, err := cert.VerifyDelegate(chain, s.root, key.GetPublic(), scope, s.tmpl.Name, now, nil); err != nil {
		return fmt.Errorf("the new chain does not verify: %w", err)
	}
	if err := cert.WriteKeyFile(outKey, key); err != nil {
		return err
	}
	if err := writeChain(out, chain); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: enrollment key %s may admit members of %v %q until %s (serial %v)\n",
		out, outKey, scope, s.tmpl.Name, chain[0].NotAfter.Format(time.RFC3339), chain[0].Serial)
	return nil
}

func writeChain(path string, chain []cert.Cert) error {
	text, err := cert.MarshalChainText(chain)
	if err != nil {
		return err
	}
	return writeFile(path, text, 0o644)
}

// writeFile writes then renames, so a reader never sees half a file.
func writeFile(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func revokeCmd(scope cert.Scope, args []string, stdout io.Writer) error {
	cmd := scope.String() + " revoke"
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	keyPath := fs.String("key", "", "owner key `file`")
	certPath := fs.String("cert", "", "certificate chain `file` whose first certificate to revoke")
	serialText := fs.String("serial", "", "serial of the certificate to revoke, in `hex`")
	out := fs.String("out", "", "revocation list `file` to append to")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return prefix(cmd, revoke(scope, *keyPath, *certPath, *serialText, *out, time.Now(), stdout))
}

func revoke(scope cert.Scope, keyPath, certPath, serialText, out string, now time.Time, stdout io.Writer) error {
	if (certPath == "") == (serialText == "") {
		return usageError{errors.New("give -cert or -serial, one of them")}
	}
	if out == "" {
		return usageError{errors.New("-out is required")}
	}
	var serial cert.Serial
	if serialText != "" {
		var err error
		if serial, err = cert.ParseSerial(serialText); err != nil {
			return usageError{fmt.Errorf("-serial: %w", err)}
		}
	}
	if keyPath == "" {
		return usageError{errors.New("-key is required")}
	}
	key, err := cert.ReadKeyFile(keyPath)
	if err != nil {
		return err
	}
	// Only the owner signs revocations, and only its key has settings.
	sPath := settingsPath(keyPath)
	if _, err := os.Stat(sPath); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s is not an owner key (no settings %s beside it): only the owner key signs revocations", keyPath, sPath)
	}
	tmpl, err := readSettings(sPath, scope, key)
	if err != nil {
		return err
	}
	if certPath != "" {
		chain, err := readChain(certPath)
		if err != nil {
			return err
		}
		c := chain[0]
		if c.Scope != scope || c.Name != tmpl.Name {
			return fmt.Errorf("%s is a certificate of %v %q, not of %v %q", certPath, c.Scope, c.Name, scope, tmpl.Name)
		}
		if top := chain[len(chain)-1]; !top.Issuer.Equals(key.GetPublic()) {
			return fmt.Errorf("%s does not come from owner key %s", certPath, keyPath)
		}
		serial = c.Serial
	}

	var old []cert.Revocation
	data, err := os.ReadFile(out)
	switch {
	case err == nil:
		if old, err = cert.ParseRevocationsText(data); err != nil {
			return fmt.Errorf("revocation list %s: %w", out, err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	for _, r := range old {
		if r.Serial == serial && r.Scope == scope && r.Name == tmpl.Name {
			fmt.Fprintf(stdout, "%s: serial %v of %v %q was already revoked\n", out, serial, scope, tmpl.Name)
			return nil
		}
	}
	r, err := cert.Revoke(key, scope, tmpl.Name, serial, now)
	if err != nil {
		return err
	}
	text, err := cert.MarshalRevocationsText([]cert.Revocation{r})
	if err != nil {
		return err
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(text)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("revocation list %s: %w", out, err)
	}
	fmt.Fprintf(stdout, "%s: revoked serial %v of %v %q\n", out, serial, scope, tmpl.Name)
	return nil
}

// certCommand runs "ringnet cert ...".
func certCommand(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "show" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return usageError{errors.New("cert: no subcommand")}
		}
		return usageError{fmt.Errorf("cert: unknown subcommand %q", args[0])}
	}
	const cmd = "cert show"
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	rootText := fs.String("root", "", "check the file against this root public `key`")
	if err := fs.Parse(args[1:]); err != nil {
		return usageError{fmt.Errorf("%s: %w", cmd, err)}
	}
	if fs.NArg() != 1 {
		return usageError{fmt.Errorf("%s: want one file", cmd)}
	}
	var root crypto.PubKey
	if *rootText != "" {
		var err error
		if root, err = cert.ParsePublicKey(*rootText); err != nil {
			return usageError{fmt.Errorf("%s: -root: %w", cmd, err)}
		}
	}
	return prefix(cmd, show(fs.Arg(0), root, time.Now(), stdout))
}

// show prints the certificates and revocations in a file; with a root,
// it also verifies them, and fails if they do not verify.
func show(path string, root crypto.PubKey, now time.Time, w io.Writer) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var chain []cert.Cert
	var revs []cert.Revocation
	for rest := data; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		switch block.Type {
		case cert.CertBlock:
			c, err := cert.ParseCert(block.Bytes)
			if err != nil {
				return fmt.Errorf("%s: certificate %d: %w", path, len(chain)+1, err)
			}
			chain = append(chain, c)
		case cert.RevocationBlock:
			r, err := cert.ParseRevocation(block.Bytes)
			if err != nil {
				return fmt.Errorf("%s: revocation %d: %w", path, len(revs)+1, err)
			}
			revs = append(revs, r)
		default:
			return fmt.Errorf("%s: unknown block %q", path, block.Type)
		}
	}
	if len(chain) == 0 && len(revs) == 0 {
		return fmt.Errorf("%s: no certificates or revocations in it", path)
	}
	for i := range chain {
		printCert(w, chain, i, now)
	}
	for i, r := range revs {
		fmt.Fprintf(w, "revocation %d: serial %v of %v %q, issued %s\n", i+1, r.Serial, r.Scope, r.Name, r.Issued.Format(time.RFC3339))
	}
	if root == nil {
		return nil
	}
	if len(chain) > 0 {
		leaf := chain[0]
		if leaf.Kind == cert.Member {
			id, _ := leaf.SubjectID()
			_, err = cert.Verify(chain, root, id, leaf.Scope, leaf.Name, now, nil)
		} else {
			_, err = cert.VerifyDelegate(chain, root, leaf.Subject, leaf.Scope, leaf.Name, now, nil)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		fmt.Fprintln(w, "chain verified against the root key")
	}
	for i := range revs {
		if err := revs[i].Verify(root); err != nil {
			return fmt.Errorf("%s: revocation %d: %w", path, i+1, err)
		}
	}
	if len(revs) > 0 {
		fmt.Fprintln(w, "revocations signed by the root key")
	}
	return nil
}

func printCert(w io.Writer, chain []cert.Cert, i int, now time.Time) {
	c := &chain[i]
	keyText := func(k crypto.PubKey) string {
		s, err := cert.FormatPublicKey(k)
		if err != nil {
			return err.Error()
		}
		return s
	}
	fmt.Fprintf(w, "certificate %d of %d: %v of %v %q\n", i+1, len(chain), c.Kind, c.Scope, c.Name)
	if c.Scope == cert.Namespace {
		fmt.Fprintf(w, "  subnet:    %v, lease time %v\n", c.Subnet, c.LeaseTime)
	}
	if c.Kind == cert.Member {
		id, _ := c.SubjectID()
		fmt.Fprintf(w, "  subject:   peer %s\n", id)
	} else {
		fmt.Fprintf(w, "  subject:   key %s\n", keyText(c.Subject))
	}
	switch {
	case i == len(chain)-1:
		fmt.Fprintf(w, "  issuer:    key %s (the root)\n", keyText(c.Issuer))
	case c.Issuer.Equals(chain[i+1].Subject):
		fmt.Fprintf(w, "  issuer:    the subject of certificate %d\n", i+2)
	default:
		fmt.Fprintf(w, "  issuer:    key %s, NOT the subject of certificate %d\n", keyText(c.Issuer), i+2)
	}
	fmt.Fprintf(w, "  serial:    %v\n", c.Serial)
	state := "valid now"
	switch {
	case now.Before(c.NotBefore):
		state = "not yet valid"
	case !now.Before(c.NotAfter):
		state = "EXPIRED"
	}
	fmt.Fprintf(w, "  validity:  %s to %s (%s)\n", c.NotBefore.Format(time.RFC3339), c.NotAfter.Format(time.RFC3339), state)
	sig := "good"
	if err := c.CheckSignature(); err != nil {
		sig = "BAD"
	}
	fmt.Fprintf(w, "  signature: %s\n", sig)
}
