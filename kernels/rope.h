// Rotary position embedding in Meta's interleaved-pair layout (HF rotate-half weights are
// permuted into this layout at load): for each head and pair i of (x[2i], x[2i+1]),
// angle = pos * theta^(-2i/head_dim), rotated by that angle.
#pragma once

namespace sqz {

// x: [n_tokens, n_heads * head_dim], rotated in place; pos[t] is token t's position.
void rope(float* x, const int* pos, int n_tokens, int n_heads, int head_dim, float theta);

}  // namespace sqz
