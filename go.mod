module github.com/elsa-stream/elsa-stream

go 1.26.0

require (
	github.com/edsrzf/mmap-go v1.2.0
	github.com/eliben/go-sentencepiece v0.6.0
	github.com/nlpodyssey/safetensors v0.0.0-20250209183917-bfb01cc25f7c
	google.golang.org/protobuf v1.34.2
)

require github.com/klauspost/compress v1.20.4

require gonum.org/v1/gonum v0.17.0 // indirect

require (
	github.com/google/go-cmp v0.6.0 // indirect
	golang.org/x/sys v0.50.0
)
