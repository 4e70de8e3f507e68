package bus

// AckMessage is ackMessage, for the codec's fuzz test.
type AckMessage = ackMessage
