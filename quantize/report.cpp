#include "quantize/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include "model/errors.h"

namespace sqz {

namespace {

const char* const kTypes[8] = {"q_proj", "k_proj", "v_proj", "o_proj",
                               "gate_proj", "up_proj", "down_proj", "lm_head"};

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

std::string mib(double bytes) { return fmt("%.2f MiB", bytes / (1024.0 * 1024.0)); }

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

}  // namespace

std::vector<ModuleReport> module_reports(const Model& m) {
  std::vector<ModuleReport> out;
  const char* ours[7] = {"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"};
  const char* types[7] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  auto add = [&](const LinearWeight& w, const std::string& name, const std::string& type, int layer) {
    ModuleReport r;
    r.name = name, r.type = type, r.layer = layer, r.rows = w.rows, r.cols = w.cols;
    r.n_bytes = w.n_bytes();
    if (w.kind == WeightKind::PACKED) {
      r.kind = "squeeze", r.bits = w.bits, r.n_outliers = w.nnz;
    } else {
      r.kind = "fp16", r.bits = int(dtype_size(w.dtype) * 8);
    }
    r.effective_bits = 8.0 * double(r.n_bytes) / (double(w.rows) * w.cols);
    out.push_back(r);
  };
  for (size_t l = 0; l < m.layers.size(); l++) {
    const LayerWeights& L = m.layers[l];
    const LinearWeight* ws[7] = {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down};
    for (int i = 0; i < 7; i++)
      add(*ws[i], "layers." + std::to_string(l) + "." + ours[i], types[i], int(l));
  }
  // A dense head is part of the FP16 rest; only a quantized one is listed with the linears.
  if (!m.config.shared_classifier && m.classifier.kind == WeightKind::PACKED)
    add(m.classifier, "output", "lm_head", -1);
  return out;
}

std::string size_table(const std::vector<ModuleReport>& modules, const Model& m) {
  std::ostringstream s;
  char line[256];
  std::snprintf(line, sizeof line, "%-10s %5s %6s %9s %9s %11s %12s\n", "module", "count", "bits",
                "outl avg%", "outl max%", "bits/weight", "size");
  s << line;
  int64_t lin_bytes = 0, lin_params = 0;
  for (const char* t : kTypes) {
    int n = 0;
    double pct_sum = 0, pct_max = 0;
    int64_t bytes = 0, params = 0;
    std::map<std::string, int> bits;
    for (const ModuleReport& r : modules) {
      if (r.type != t) continue;
      n++;
      double pct = 100.0 * double(r.n_outliers) / (double(r.rows) * r.cols);
      pct_sum += pct, pct_max = std::max(pct_max, pct);
      int64_t eff_bytes = int64_t(std::llround(r.effective_bits * double(r.rows) * r.cols / 8));
      bytes += eff_bytes, params += int64_t(r.rows) * r.cols;
      bits[r.kind == "rtn" ? std::to_string(r.bits) + "r" : std::to_string(r.bits)]++;
    }
    if (!n) continue;
    std::string b;
    for (auto& kv : bits) b += (b.empty() ? "" : "/") + kv.first;
    std::snprintf(line, sizeof line, "%-10s %5d %6s %9.3f %9.3f %11.3f %12s\n", t, n, b.c_str(),
                  pct_sum / n, pct_max, 8.0 * double(bytes) / double(params), mib(double(bytes)).c_str());
    s << line;
    lin_bytes += bytes, lin_params += params;
  }
  // Everything else (embeddings, norms, a head left dense) as stored.
  const int64_t total_params = m.n_params();
  int64_t other_bytes = int64_t(m.tok_embeddings.n_elems()) * 2 + m.final_norm.n_elems() * 2;
  for (const LayerWeights& L : m.layers) other_bytes += (L.attn_norm.n_elems() + L.ffn_norm.n_elems()) * 2;
  bool head_listed = false;
  for (const ModuleReport& r : modules) head_listed |= r.type == "lm_head";
  if (!m.config.shared_classifier && !head_listed)
    other_bytes += int64_t(m.classifier.rows) * m.classifier.cols * 2;
  const int64_t total = lin_bytes + other_bytes;
  s << "linears:   " << mib(double(lin_bytes)) << ", "
    << fmt("%.3f", 8.0 * double(lin_bytes) / double(std::max<int64_t>(1, lin_params)))
    << " bits per weight over " << lin_params << " weights\n";
  s << "fp16 rest: " << mib(double(other_bytes)) << " (embeddings, norms"
    << (m.config.shared_classifier || head_listed ? "" : ", output head") << ")\n";
  s << "total:     " << mib(double(total)) << ", "
    << fmt("%.3f", 8.0 * double(total) / double(total_params)) << " bits per parameter; FP16 "
    << mib(double(total_params) * 2) << "; compression "
    << fmt("%.2fx", double(total_params) * 2 / double(total)) << " vs FP16\n";
  return s.str();
}

std::string sweep_svg(const std::vector<SweepPoint>& pts) {
  if (pts.empty()) return "";
  const double W = 640, H = 360, L = 70, R = 20, T = 20, B = 50;
  double x0 = 1e30, x1 = -1e30, y0 = 1e30, y1 = -1e30;
  for (auto& p : pts) x0 = std::min(x0, p.size_mib), x1 = std::max(x1, p.size_mib),
                      y0 = std::min(y0, p.ppl), y1 = std::max(y1, p.ppl);
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + 1;
  double dx = (x1 - x0) * 0.08, dy = (y1 - y0) * 0.1;
  x0 -= dx, x1 += dx, y0 -= dy, y1 += dy;
  auto X = [&](double v) { return L + (v - x0) / (x1 - x0) * (W - L - R); };
  auto Y = [&](double v) { return H - B - (v - y0) / (y1 - y0) * (H - T - B); };
  std::ostringstream s;
  s << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "'>";
  s << "<rect x='" << L << "' y='" << T << "' width='" << W - L - R << "' height='" << H - T - B
    << "' fill='none' stroke='#888'/>";
  for (int i = 0; i <= 4; i++) {
    double xv = x0 + (x1 - x0) * i / 4, yv = y0 + (y1 - y0) * i / 4;
    s << "<text x='" << X(xv) << "' y='" << H - B + 16 << "' font-size='11' text-anchor='middle'>"
      << fmt("%.1f", xv) << "</text>";
    s << "<text x='" << L - 6 << "' y='" << Y(yv) + 4 << "' font-size='11' text-anchor='end'>"
      << fmt("%.2f", yv) << "</text>";
  }
  s << "<text x='" << (L + W - R) / 2 << "' y='" << H - 10
    << "' font-size='12' text-anchor='middle'>size (MiB)</text>";
  s << "<text x='14' y='" << (T + H - B) / 2 << "' font-size='12' transform='rotate(-90 14 "
    << (T + H - B) / 2 << ")' text-anchor='middle'>perplexity</text>";
  const char* colors[5] = {"#c0392b", "#2471a3", "#229954", "#7d3c98", "#b9770e"};
  for (auto& p : pts) {
    const char* col = colors[(p.bits - 2) % 5];
    s << "<circle cx='" << X(p.size_mib) << "' cy='" << Y(p.ppl) << "' r='4' fill='" << col
      << "'><title>" << esc(p.label) << ": " << fmt("%.3f", p.ppl) << "</title></circle>";
    s << "<text x='" << X(p.size_mib) + 6 << "' y='" << Y(p.ppl) - 6 << "' font-size='10'>"
      << esc(p.label) << "</text>";
  }
  s << "</svg>";
  return s.str();
}

void write_html_report(const std::string& path, const QuantizeResult& r,
                       const std::string& title, const std::vector<SweepPoint>& sweep) {
  std::ostringstream h;
  h << "<!DOCTYPE html><html><head><meta charset='utf-8'><title>" << esc(title)
    << "</title><style>body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
       "pre{background:#f6f6f6;padding:1em;overflow-x:auto}h2{margin-top:2em}"
       "table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;"
       "text-align:right}</style></head><body>";
  h << "<h1>" << esc(title) << "</h1>";
  h << "<pre>" << esc(size_table(r.modules, r.model)) << "</pre>";

  // 1. The chosen row's weight histogram with its centroids and outliers.
  if (!r.report_row_values.empty()) {
    const auto& v = r.report_row_values;
    float lo = *std::min_element(v.begin(), v.end()), hi = *std::max_element(v.begin(), v.end());
    if (hi <= lo) hi = lo + 1e-6f;
    const int nb = 80;
    std::vector<int> cnt(nb, 0), out_cnt(nb, 0);
    for (size_t i = 0; i < v.size(); i++) {
      int b = std::min(nb - 1, int((v[i] - lo) / (hi - lo) * nb));
      (r.report_row_is_outlier[i] ? out_cnt : cnt)[b]++;
    }
    int mx = 1;
    for (int b = 0; b < nb; b++) mx = std::max(mx, cnt[b] + out_cnt[b]);
    const double W = 900, H = 260, L = 40, B = 30;
    h << "<h2>Row " << "histogram</h2><p>One row of the module (" << r.report_cols
      << " weights): grey bars are weights coded by the LUT, red bars the outliers kept exactly, "
         "blue lines the row's centroids.</p>";
    h << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "'>";
    double bw = (W - L) / nb;
    for (int b = 0; b < nb; b++) {
      double hh = (H - B - 10) * cnt[b] / mx, ho = (H - B - 10) * out_cnt[b] / mx;
      h << "<rect x='" << L + b * bw << "' y='" << H - B - hh << "' width='" << bw - 1
        << "' height='" << hh << "' fill='#999'/>";
      if (out_cnt[b])
        h << "<rect x='" << L + b * bw << "' y='" << H - B - hh - ho << "' width='" << bw - 1
          << "' height='" << ho << "' fill='#c0392b'/>";
    }
    for (float c : r.report_row_centroids) {
      double x = L + (c - lo) / (hi - lo) * (W - L);
      h << "<line x1='" << x << "' x2='" << x << "' y1='5' y2='" << H - B
        << "' stroke='#2471a3' stroke-width='1.5'><title>" << fmt("%.5g", c) << "</title></line>";
    }
    h << "<text x='" << L << "' y='" << H - 8 << "' font-size='11'>" << fmt("%.4g", lo)
      << "</text><text x='" << W - 4 << "' y='" << H - 8 << "' font-size='11' text-anchor='end'>"
      << fmt("%.4g", hi) << "</text></svg>";
  }

  // 2. Outlier counts per layer and module type (grouped bars).
  {
    int n_layers = int(r.model.layers.size());
    const char* types[7] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    const char* colors[7] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"};
    std::vector<std::vector<double>> pct(n_layers, std::vector<double>(7, 0));
    double mx = 1e-9;
    for (const ModuleReport& m : r.modules)
      for (int t = 0; t < 7; t++)
        if (m.type == types[t] && m.layer >= 0) {
          pct[m.layer][t] = 100.0 * double(m.n_outliers) / (double(m.rows) * m.cols);
          mx = std::max(mx, pct[m.layer][t]);
        }
    const double W = 900, H = 280, L = 50, B = 40;
    double gw = (W - L) / std::max(1, n_layers), bw = gw / 8;
    h << "<h2>Outliers per layer and module type</h2><p>Percentage of each module's weights "
         "kept as FP16 outliers (sensitive + magnitude).</p>";
    h << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H + 20 << "'>";
    for (int l = 0; l < n_layers; l++) {
      for (int t = 0; t < 7; t++) {
        double hh = (H - B - 10) * pct[l][t] / mx;
        h << "<rect x='" << L + l * gw + t * bw << "' y='" << H - B - hh << "' width='" << bw
          << "' height='" << hh << "' fill='" << colors[t] << "'><title>layer " << l << " "
          << types[t] << ": " << fmt("%.3f%%", pct[l][t]) << "</title></rect>";
      }
      h << "<text x='" << L + l * gw + gw / 2 << "' y='" << H - B + 14
        << "' font-size='10' text-anchor='middle'>" << l << "</text>";
    }
    h << "<text x='" << L - 6 << "' y='14' font-size='10' text-anchor='end'>" << fmt("%.2f%%", mx)
      << "</text><text x='" << L - 6 << "' y='" << H - B << "' font-size='10' text-anchor='end'>0</text>";
    for (int t = 0; t < 7; t++)
      h << "<rect x='" << L + t * 110 << "' y='" << H - 8 << "' width='10' height='10' fill='"
        << colors[t] << "'/><text x='" << L + t * 110 + 14 << "' y='" << H + 1
        << "' font-size='11'>" << types[t] << "</text>";
    h << "</svg>";
  }

  // 3. Map of outlier positions in the chosen module (density on a grid).
  if (r.report_rows > 0) {
    const int gx = std::min(r.report_cols, 256), gy = std::min(r.report_rows, 128);
    std::vector<int> grid(size_t(gx) * gy, 0);
    for (int64_t p : r.report_outliers) {
      int row = int(p / r.report_cols), col = int(p % r.report_cols);
      grid[size_t(int64_t(row) * gy / r.report_rows) * gx + int64_t(col) * gx / r.report_cols]++;
    }
    int mx = 1;
    for (int g : grid) mx = std::max(mx, g);
    const double cw = 900.0 / gx, ch = 3.0;
    h << "<h2>Outlier positions</h2><p>" << r.report_outliers.size() << " outliers in a "
      << r.report_rows << " x " << r.report_cols
      << " module; each cell is a block of rows (down) and columns (across), darker = more.</p>";
    h << "<svg xmlns='http://www.w3.org/2000/svg' width='900' height='" << gy * ch << "'>";
    h << "<rect width='900' height='" << gy * ch << "' fill='#fff' stroke='#ccc'/>";
    for (int y = 0; y < gy; y++)
      for (int x = 0; x < gx; x++) {
        int g = grid[size_t(y) * gx + x];
        if (!g) continue;
        double a = 0.15 + 0.85 * double(g) / mx;
        h << "<rect x='" << x * cw << "' y='" << y * ch << "' width='" << cw << "' height='" << ch
          << "' fill='#c0392b' fill-opacity='" << fmt("%.2f", a) << "'/>";
      }
    h << "</svg>";
  }

  if (!sweep.empty()) {
    h << "<h2>Perplexity against size</h2>" << sweep_svg(sweep) << "<table><tr><th>setting</th>"
      << "<th>bits</th><th>outliers %</th><th>sensitive %</th><th>size MiB</th><th>bits/weight</th>"
      << "<th>PPL</th></tr>";
    for (auto& p : sweep)
      h << "<tr><td>" << esc(p.label) << "</td><td>" << p.bits << "</td><td>" << p.outliers_pct
        << "</td><td>" << p.sensitive_pct << "</td><td>" << fmt("%.2f", p.size_mib) << "</td><td>"
        << fmt("%.3f", p.bits_per_weight) << "</td><td>" << fmt("%.4f", p.ppl) << "</td></tr>";
    h << "</table>";
  }

  // 4. Every module.
  h << "<h2>Modules</h2><table><tr><th>module</th><th>kind</th><th>bits</th><th>outliers</th>"
       "<th>sensitive</th><th>rel. error</th><th>bits/weight</th><th>seconds</th></tr>";
  for (const ModuleReport& m : r.modules)
    h << "<tr><td style='text-align:left'>" << esc(m.name) << "</td><td>" << m.kind << "</td><td>"
      << m.bits << "</td><td>" << m.n_outliers << "</td><td>" << m.n_sensitive << "</td><td>"
      << fmt("%.3e", m.sq_norm > 0 ? m.sq_err / m.sq_norm : 0) << "</td><td>"
      << fmt("%.3f", m.effective_bits) << "</td><td>" << fmt("%.2f", m.seconds) << "</td></tr>";
  h << "</table></body></html>\n";
  std::ofstream f(path);
  if (!f) throw format_error(path + ": cannot write the report");
  f << h.str();
}

}  // namespace sqz
