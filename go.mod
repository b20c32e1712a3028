module github.com/elsa-stream/elsa-stream

go 1.26.0

require (
	github.com/edsrzf/mmap-go v1.2.0
	github.com/eliben/go-sentencepiece v0.6.0
	github.com/nlpodyssey/safetensors v0.0.0-20250209183917-bfb01cc25f7c
	gonum.org/v1/gonum v0.17.0
	google.golang.org/protobuf v1.34.2
)

require golang.org/x/sys v0.50.0 // indirect
