package overlay

import "unsafe"

// unsafePointer lets the socket code overlay a control-message header on a
// byte buffer, as the kernel lays it out.
func unsafePointer(b *byte) unsafe.Pointer { return unsafe.Pointer(b) }
