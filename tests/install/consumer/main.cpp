// A program built against an installed flsl: a fused expression, a reduction and a matmul, each
// checked against the value it must have. Exits non-zero on a wrong value.
#include <cstdio>
#include <flsl/flsl.hpp>

int main() {
  using flsl::Tensor;
  auto a = Tensor<float>::arange(6).view({2, 3});  // [2, 3] = {{0, 1, 2}, {3, 4, 5}}
  auto b = Tensor<float>::ones({3});               // broadcasts over the rows
  Tensor<float> c = a * 2.0f + b;                  // one fused pass: {{1, 3, 5}, {7, 9, 11}}
  const float total = flsl::sum(c).item();         // 36
  auto p = flsl::matmul(c, c.t());                 // [2, 2]: {{35, 89}, {89, 251}}
  const bool ok = total == 36.0f && p(0, 0) == 35.0f && p(0, 1) == 89.0f && p(1, 1) == 251.0f;
  std::printf("flsl consumer: sum %g, (c c^T)[0,1] %g: %s\n", double(total), double(p(0, 1)),
              ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
