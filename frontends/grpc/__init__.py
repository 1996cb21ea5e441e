"""tritonpy frontends/grpc."""
