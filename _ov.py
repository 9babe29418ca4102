import time, numpy as np
import runtime
from runtime.session import OnnxModel
from runtime.explain import explain
m = OnnxModel("/tmp/frames_bench/deit.onnx", provider="cpu")
x = np.random.default_rng(0).standard_normal((1,3,224,224)).astype(np.float32)
sess = m.session
for _ in range(5): m.run(x); m.run_plain(x)
ta, tp, tl, tb = [], [], [], []
# io binding with reused output buffers
io = sess.io_binding()
att = np.empty((1,12,3,197,197), np.float32); lg = np.empty((1,1000), np.float32)
io.bind_cpu_input("input", x); io.bind_output("logits", "cpu", 0, np.float32, lg.shape, lg.ctypes.data); io.bind_output("attentions", "cpu", 0, np.float32, att.shape, att.ctypes.data)
for i in range(60):
    t=time.perf_counter(); o=m.run(x); explain("rollout", o.attentions, m.meta.layout); ta.append(time.perf_counter()-t)
    t=time.perf_counter(); m.run_plain(x); tp.append(time.perf_counter()-t)
    t=time.perf_counter(); sess.run(["logits"], {"input": x}); tl.append(time.perf_counter()-t)
    t=time.perf_counter(); sess.run_with_iobinding(io); explain("rollout", att, m.meta.layout); tb.append(time.perf_counter()-t)
med=lambda v: np.median(v)*1e3
print("attn+rollout %.2f  plain(pruned) %.2f  same-graph logits only %.2f  iobinding+rollout %.2f  ratio %.3f  ratio_iob %.3f" % (med(ta), med(tp), med(tl), med(tb), med(ta)/med(tp), med(tb)/med(tp)))
