package tap

import (
	"fmt"
	"io"
	"os"
	"sync"
)

// pipeQueueLen is how many frames a Pipe buffers in each direction before
// WriteFrame blocks.
const pipeQueueLen = 256

// Pipe is one end of an in-memory Device pair made by NewPipe, for tests
// that run a node without a kernel: frames written on one end are read on
// the other, in order, one frame per ReadFrame.
//
// After Close, ReadFrame and WriteFrame on that end return an error
// matching os.ErrClosed (as the Linux device does). Once the other end is
// closed, ReadFrame returns the frames still queued and then io.EOF, and
// WriteFrame returns io.ErrClosedPipe.
type Pipe struct {
	name string
	in   <-chan []byte
	out  chan<- []byte

	closed     chan struct{} // closed by this end's Close
	peerClosed chan struct{} // the other end's closed
	closeOnce  sync.Once
}

var _ Device = (*Pipe)(nil)

// NewPipe returns the two ends of an in-memory Device: vm stands for the
// VM's kernel, node is the end a node reads and writes as its TAP.
func NewPipe() (vm, node *Pipe) {
	toNode := make(chan []byte, pipeQueueLen)
	toVM := make(chan []byte, pipeQueueLen)
	vmClosed := make(chan struct{})
	nodeClosed := make(chan struct{})
	vm = &Pipe{name: "pipe-vm", in: toVM, out: toNode, closed: vmClosed, peerClosed: nodeClosed}
	node = &Pipe{name: "pipe-node", in: toNode, out: toVM, closed: nodeClosed, peerClosed: vmClosed}
	return vm, node
}

// ReadFrame waits for the next frame and copies it into buf. A frame longer
// than buf is cut to fit and reported with io.ErrShortBuffer, so tests see
// a too-small buffer instead of a silently truncated frame.
// ReadFrames implements BatchReader.
func (p *Pipe) ReadFrames(bufs [][]byte, sizes []int) (int, error) {
	n, err := p.ReadFrame(bufs[0])
	if err != nil {
		return 0, err
	}
	sizes[0] = n
	count := 1
	for ; count < len(bufs); count++ {
		select {
		case frame := <-p.in:
			if sizes[count], err = p.deliver(bufs[count], frame); err != nil {
				return count, nil
			}
		default:
			return count, nil
		}
	}
	return count, nil
}

func (p *Pipe) ReadFrame(buf []byte) (int, error) {
	if p.isClosed() {
		return 0, p.closedErr("read")
	}
	select {
	case frame := <-p.in:
		return p.deliver(buf, frame)
	case <-p.closed:
		return 0, p.closedErr("read")
	case <-p.peerClosed:
		// Hand out what the peer wrote before it closed.
		select {
		case frame := <-p.in:
			return p.deliver(buf, frame)
		default:
			return 0, io.EOF
		}
	}
}

func (p *Pipe) deliver(buf, frame []byte) (int, error) {
	n := copy(buf, frame)
	if n < len(frame) {
		return n, fmt.Errorf("%s: read %d-byte frame into %d bytes: %w", p.name, len(frame), len(buf), io.ErrShortBuffer)
	}
	return n, nil
}

// WriteFrame queues a copy of frame for the other end, waiting while the
// queue is full.
func (p *Pipe) WriteFrame(frame []byte) error {
	if p.isClosed() {
		return p.closedErr("write")
	}
	select {
	case <-p.peerClosed:
		return io.ErrClosedPipe
	default:
	}
	frame = append([]byte(nil), frame...)
	select {
	case p.out <- frame:
		return nil
	case <-p.closed:
		return p.closedErr("write")
	case <-p.peerClosed:
		return io.ErrClosedPipe
	}
}

// Name is "pipe-vm" or "pipe-node".
func (p *Pipe) Name() string { return p.name }

// Close closes this end and unblocks its pending ReadFrame and WriteFrame.
// It is safe to call more than once.
func (p *Pipe) Close() error {
	p.closeOnce.Do(func() { close(p.closed) })
	return nil
}

func (p *Pipe) isClosed() bool {
	select {
	case <-p.closed:
		return true
	default:
		return false
	}
}

func (p *Pipe) closedErr(op string) error {
	return &os.PathError{Op: op, Path: p.name, Err: os.ErrClosed}
}
