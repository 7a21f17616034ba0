module kartflow.dev/hack/images/imagebuild

go 1.25.0
