"""tritonpy frontends/http."""
