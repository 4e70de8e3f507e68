package protocol

// DecodeFrameFast is decodeFrameFast, for the codec's fuzz tests.
var DecodeFrameFast = decodeFrameFast
