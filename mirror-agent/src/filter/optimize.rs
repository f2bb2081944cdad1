//! The compiler's intermediate form, a DAG of fused tests, its optimizer
//! and its layout into filter-machine instructions.
//!
//! A node is one test (a load, a mask and a comparison, or straight-line
//! arithmetic then a comparison) and two successors. The optimizer mirrors
//! what libpcap's does to the same code, because tcpdump's verdicts are the
//! optimized program's: a load past the end of the frame rejects the whole
//! packet, so which loads run is part of the semantics.
//!
//! - jump threading: an edge into a test whose outcome the tests already
//!   passed on *every* path imply (same value, compatible comparison) goes
//!   straight to the implied successor; the skipped load already ran;
//! - a test whose two successors are the same node is dropped (libpcap
//!   drops it, and its load with it);
//! - libpcap's "pull-ups": in a chain of `or`ed (`and`ed) tests sharing a
//!   target, a later test of the value the chain's predecessor tested moves
//!   up, before tests of other values;
//! - identical nodes are merged, unreachable ones dropped.
use std::collections::HashMap;

use mirror_common::{
    FilterInsn,
    filter::{cmp, op, test_arg},
};

/// What a test compares.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Src {
    /// `P[off:size] & mask`.
    Abs { off: u32, size: u8, mask: u32 },
    /// `P[X + off:size] & mask` with `X = 4 * (P[hdr] & 0xf)`.
    Msh { hdr: u32, off: u32, size: u8, mask: u32 },
    /// `field[k] & mask`.
    Field { k: u32, mask: u32 },
    /// `A` after straight-line code (loads, arithmetic, scratch memory; no
    /// jumps), compared with the test's constant.
    Acc(Vec<FilterInsn>),
    /// `A` compared with `X`, both set by the code.
    AccX(Vec<FilterInsn>),
    /// Arithmetic that only constant folding decides: the code (for
    /// identity) and its value. libpcap folds such arithmetic in its second
    /// pass, which no longer moves jumps, so the tests before it are not
    /// bypassed (see [`optimize`]); the node itself loads nothing.
    Folded { code: Vec<FilterInsn>, value: u32 },
}

impl Src {
    /// Whether the test compares with `X` (then only the same comparison
    /// decides it).
    fn is_x(&self) -> bool {
        matches!(self, Src::AccX(_))
    }
}

/// `src <cmp> val` (`val` unused for [`Src::AccX`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Test {
    pub src: Src,
    pub cmp: u8,
    pub val: u32,
}

pub type NodeId = u32;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Node {
    /// Accept (`true`) or reject.
    Leaf(bool),
    Branch { test: Test, jt: NodeId, jf: NodeId },
}

/// A rooted DAG. Built bottom-up, so successors have smaller ids than
/// their predecessors until a pull-up moves a node; [`rebuild`] restores
/// that order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dag {
    pub nodes: Vec<Node>,
    pub entry: NodeId,
}

/// Builds a [`Dag`] bottom-up, merging identical nodes.
#[derive(Debug, Default)]
pub struct Builder {
    nodes: Vec<Node>,
    interned: HashMap<Node, NodeId>,
}

impl Builder {
    pub fn node(&mut self, node: Node) -> NodeId {
        if let Some(id) = self.interned.get(&node) {
            return *id;
        }
        let id = self.nodes.len() as NodeId;
        self.nodes.push(node.clone());
        self.interned.insert(node, id);
        id
    }

    pub fn leaf(&mut self, accept: bool) -> NodeId {
        self.node(Node::Leaf(accept))
    }

    pub fn branch(&mut self, test: Test, jt: NodeId, jf: NodeId) -> NodeId {
        self.node(Node::Branch { test, jt, jf })
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn finish(self, entry: NodeId) -> Dag {
        Dag { nodes: self.nodes, entry }
    }
}

fn succ(node: &Node) -> Option<(NodeId, NodeId)> {
    match node {
        Node::Leaf(_) => None,
        Node::Branch { jt, jf, .. } => Some((*jt, *jf)),
    }
}

/// The reachable part of `dag`, identical nodes merged, in post-order
/// (successors first; the entry is last); with `bypass`, tests whose two
/// successors agree are dropped, as libpcap's jump optimization does (and
/// their loads with them).
pub fn rebuild(dag: &Dag, bypass: bool) -> Dag {
    let n = dag.nodes.len();
    let mut new_id: Vec<Option<NodeId>> = vec![None; n];
    let mut out = Builder::default();
    // Iterative post-order: DAGs of long `or` chains are deep.
    let mut stack: Vec<(NodeId, bool)> = vec![(dag.entry, false)];
    while let Some((id, expanded)) = stack.pop() {
        if new_id[id as usize].is_some() {
            continue;
        }
        match &dag.nodes[id as usize] {
            Node::Leaf(v) => new_id[id as usize] = Some(out.leaf(*v)),
            Node::Branch { test, jt, jf } => {
                match (new_id[*jt as usize], new_id[*jf as usize]) {
                    (Some(t), Some(f)) => {
                        new_id[id as usize] =
                            Some(if t == f && bypass { t } else { out.branch(test.clone(), t, f) });
                    }
                    _ => {
                        // Children unfinished: come back after them. A DAG
                        // has no cycle, so `expanded` twice cannot happen.
                        debug_assert!(!expanded, "cycle in filter DAG");
                        stack.push((id, true));
                        stack.push((*jf, false));
                        stack.push((*jt, false));
                    }
                }
            }
        }
    }
    let entry = new_id[dag.entry as usize].expect("entry rebuilt");
    out.finish(entry)
}

/// An outcome the path to an edge went through: on every path, the edge
/// `origin` (`2 * node + (0 if taken on true else 1)`) was followed, so
/// `src <cmp> val` is `outcome`. Tagging facts with their edge makes the
/// meet of two paths exactly libpcap's edge dominators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Fact {
    src: u32,
    origin: u32,
    cmp: u8,
    val: u32,
    outcome: bool,
}

/// Sorted, so that the meet is a merge.
type Facts = Vec<Fact>;

/// libpcap's `fold_edge`: a test of the same value decides another with the
/// same comparison and constant; an equality that held decides every
/// other equality. (Nothing more: deciding more tests than libpcap would
/// drop loads libpcap runs, see [`rebuild`].)
fn facts_eval(facts: &Facts, src: u32, test: &Test) -> Option<bool> {
    let start = facts.partition_point(|f| f.src < src);
    facts[start..].iter().take_while(|f| f.src == src).find_map(|f| {
        if f.cmp != test.cmp {
            None
        } else if f.val == test.val {
            Some(f.outcome)
        } else if f.cmp == cmp::EQ && f.outcome && !test.src.is_x() {
            Some(false)
        } else {
            None
        }
    })
}

fn facts_join(a: &Facts, b: &Facts) -> Facts {
    a.iter().copied().filter(|f| b.binary_search(f).is_ok()).collect()
}

fn facts_add(facts: &mut Facts, fact: Fact) {
    if let Err(i) = facts.binary_search(&fact) {
        facts.insert(i, fact);
    }
}

/// Source ids: equal sources, equal ids.
fn source_ids(dag: &Dag) -> Vec<u32> {
    let mut ids: HashMap<&Src, u32> = HashMap::new();
    dag.nodes
        .iter()
        .map(|n| match n {
            Node::Leaf(_) => u32::MAX,
            Node::Branch { test, .. } => {
                let next = ids.len() as u32;
                *ids.entry(&test.src).or_insert(next)
            }
        })
        .collect()
}

/// Jump threading. `dag` must be in post-order (as [`rebuild`] leaves it).
fn thread(dag: &mut Dag) {
    let src = source_ids(dag);
    let mut facts: Vec<Option<Facts>> = vec![None; dag.nodes.len()];
    facts[dag.entry as usize] = Some(Facts::new());
    for id in (0..=dag.entry as usize).rev() {
        let Some(here) = facts[id].take() else { continue };
        let Node::Branch { test, jt, jf } = dag.nodes[id].clone() else { continue };
        let mut targets = [jt, jf];
        for (target, outcome) in targets.iter_mut().zip([true, false]) {
            let mut edge = here.clone();
            let origin = 2 * id as u32 + u32::from(!outcome);
            facts_add(&mut edge, Fact { src: src[id], origin, cmp: test.cmp, val: test.val, outcome });
            while let Node::Branch { test: next, jt, jf } = &dag.nodes[*target as usize] {
                match facts_eval(&edge, src[*target as usize], next) {
                    Some(o) => *target = if o { *jt } else { *jf },
                    None => break,
                }
            }
            let slot = &mut facts[*target as usize];
            *slot = Some(match slot.take() {
                None => edge,
                Some(old) => facts_join(&old, &edge),
            });
        }
        dag.nodes[id] = Node::Branch { test, jt: targets[0], jf: targets[1] };
    }
}

fn src_of(dag: &Dag, id: NodeId) -> Option<&Src> {
    match &dag.nodes[id as usize] {
        Node::Leaf(_) => None,
        Node::Branch { test, .. } => Some(&test.src),
    }
}

/// One successor of a branch: `true` the jump-if-true one.
fn edge(dag: &Dag, id: NodeId, side: bool) -> NodeId {
    let (t, f) = succ(&dag.nodes[id as usize]).expect("branch");
    if side { t } else { f }
}

fn set_edge(dag: &mut Dag, id: NodeId, side: bool, to: NodeId) {
    if let Node::Branch { jt, jf, .. } = &mut dag.nodes[id as usize] {
        *if side { jt } else { jf } = to;
    }
}

/// libpcap's `or_pullup` (`chain = false`: a chain linked by false edges
/// sharing the true target) and `and_pullup` (`chain = true`). Nodes of
/// the chain below `b` must have `b`'s chain as their only predecessor
/// (libpcap asks for `b` to dominate them and assumes the rest).
fn pullup(dag: &mut Dag, preds: &[Vec<(NodeId, bool)>], b: NodeId, chain: bool) -> bool {
    let in_edges = &preds[b as usize];
    let Some(&(first, _)) = in_edges.first() else { return false };
    let Some(value) = src_of(dag, first).cloned() else { return false };
    if in_edges.iter().any(|(p, _)| src_of(dag, *p) != Some(&value)) {
        return false;
    }
    let Some(_) = succ(&dag.nodes[b as usize]) else { return false };
    let shared = edge(dag, b, !chain);
    let fits = |dag: &Dag, id: NodeId| {
        succ(&dag.nodes[id as usize]).is_some()
            && edge(dag, id, !chain) == shared
            && (id == b || preds[id as usize].len() == 1)
    };
    let mut above: Option<NodeId> = None;
    let mut diff = b;
    loop {
        if !fits(dag, diff) {
            return false;
        }
        if src_of(dag, diff) != Some(&value) {
            break;
        }
        above = Some(diff);
        diff = edge(dag, diff, chain);
    }
    let mut parent = diff;
    let mut pull = edge(dag, diff, chain);
    loop {
        if !fits(dag, pull) || pull == b {
            return false;
        }
        if src_of(dag, pull) == Some(&value) {
            break;
        }
        parent = pull;
        pull = edge(dag, pull, chain);
    }
    let after = edge(dag, pull, chain);
    set_edge(dag, parent, chain, after);
    set_edge(dag, pull, chain, diff);
    match above {
        Some(a) => set_edge(dag, a, chain, pull),
        None => {
            for &(p, side) in in_edges {
                set_edge(dag, p, side, pull);
            }
        }
    }
    true
}

/// Performs one pull-up, lowest nodes first (as libpcap walks its levels).
fn pullup_once(dag: &mut Dag) -> bool {
    let n = dag.nodes.len();
    let mut preds: Vec<Vec<(NodeId, bool)>> = vec![Vec::new(); n];
    let mut level = vec![0u32; n];
    // Post-order: successors come first.
    for id in 0..n {
        if let Some((t, f)) = succ(&dag.nodes[id]) {
            preds[t as usize].push((id as NodeId, true));
            preds[f as usize].push((id as NodeId, false));
            level[id] = 1 + level[t as usize].max(level[f as usize]);
        }
    }
    let mut order: Vec<usize> = (0..n).filter(|id| level[*id] > 0).collect();
    order.sort_by_key(|id| (level[*id], *id));
    for id in order {
        let id = id as NodeId;
        if pullup(dag, &preds, id, false) || pullup(dag, &preds, id, true) {
            return true;
        }
    }
    false
}

/// Rounds of threading and pull-ups; each round is linear-ish and the
/// graphs are small, the cap only guards against ping-pong.
const MAX_ROUNDS: usize = 256;

/// Optimizes `dag` in libpcap's two passes: first the jumps (threading,
/// pull-ups, dropping tests with one successor), then the statements,
/// where [`Src::Folded`] tests are decided: a test that jumped to one now
/// jumps to where it leads, but is no longer dropped (libpcap's second
/// pass moves no jumps), except at the entry.
pub fn optimize(dag: &Dag) -> Dag {
    let mut dag = rebuild(dag, true);
    for _ in 0..MAX_ROUNDS {
        let before = dag.clone();
        thread(&mut dag);
        dag = rebuild(&dag, true);
        if pullup_once(&mut dag) {
            dag = rebuild(&dag, true);
        }
        if dag == before {
            break;
        }
    }
    decide_folded(&mut dag);
    let mut dag = rebuild(&dag, false);
    // libpcap's `opt_root` skips an entry that jumps to one place.
    while let Node::Branch { jt, jf, .. } = dag.nodes[dag.entry as usize] {
        if jt != jf {
            break;
        }
        dag.entry = jt;
    }
    rebuild(&dag, false)
}

/// Points every edge into a [`Src::Folded`] test where the test goes.
fn decide_folded(dag: &mut Dag) {
    let outcome = |node: &Node| match node {
        Node::Branch { test: Test { src: Src::Folded { value, .. }, cmp: how, val }, jt, jf } => {
            Some(if compare(*how, *value, *val) { *jt } else { *jf })
        }
        _ => None,
    };
    let resolve = |dag: &Dag, mut id: NodeId| {
        while let Some(next) = outcome(&dag.nodes[id as usize]) {
            id = next;
        }
        id
    };
    for id in 0..dag.nodes.len() {
        if let Node::Branch { jt, jf, .. } = dag.nodes[id] {
            let (t, f) = (resolve(dag, jt), resolve(dag, jf));
            if let Node::Branch { jt, jf, .. } = &mut dag.nodes[id] {
                (*jt, *jf) = (t, f);
            }
        }
    }
    dag.entry = resolve(dag, dag.entry);
}

/// The machine's comparisons.
pub fn compare(how: u8, a: u32, b: u32) -> bool {
    match how {
        cmp::EQ => a == b,
        cmp::GT => a > b,
        cmp::GE => a >= b,
        _ => a & b != 0,
    }
}

/// What `X` holds on entry to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum XState {
    Unknown,
    /// `4 * (P[hdr] & 0xf)`.
    Msh(u32),
}

fn x_after(code: &[FilterInsn], mut x: XState) -> XState {
    for insn in code {
        x = match insn.op {
            op::LDX_MSH => XState::Msh(insn.k),
            op::LDX_IMM | op::LDX_MEM | op::LDX_LEN | op::TAX => XState::Unknown,
            _ => x,
        };
    }
    x
}

/// Where each node goes: the branches in topological order (the entry
/// first), their lengths, and whether `X` already holds what a
/// [`Src::Msh`] test needs (then its `LDX_MSH` is left out).
struct Plan {
    branches: Vec<usize>,
    size: Vec<u32>,
    x_in: Vec<XState>,
}

/// `dag` must be in post-order.
fn plan(dag: &Dag) -> Plan {
    let n = dag.nodes.len();
    let branches: Vec<usize> = (0..n).rev().filter(|id| succ(&dag.nodes[*id]).is_some()).collect();
    let mut x_in: Vec<Option<XState>> = vec![None; n];
    x_in[dag.entry as usize] = Some(XState::Unknown);
    let mut size = vec![1u32; n];
    for &id in &branches {
        let Node::Branch { test, jt, jf } = &dag.nodes[id] else { continue };
        let x = x_in[id].unwrap_or(XState::Unknown);
        let (len, x_out) = match &test.src {
            Src::Msh { hdr, .. } => (if x == XState::Msh(*hdr) { 1 } else { 2 }, XState::Msh(*hdr)),
            Src::Acc(code) | Src::AccX(code) => (code.len() as u32 + 1, x_after(code, x)),
            Src::Folded { .. } => (2, x),
            _ => (1, x),
        };
        size[id] = len;
        for t in [*jt, *jf] {
            let slot = &mut x_in[t as usize];
            *slot = Some(match *slot {
                None => x_out,
                Some(prev) if prev == x_out => prev,
                Some(_) => XState::Unknown,
            });
        }
    }
    Plan { branches, size, x_in: x_in.into_iter().map(|x| x.unwrap_or(XState::Unknown)).collect() }
}

/// Instructions [`emit`] produces for `dag`.
pub fn len(dag: &Dag) -> usize {
    let dag = rebuild(dag, false);
    let plan = plan(&dag);
    let leaves = dag.nodes.iter().filter(|n| matches!(n, Node::Leaf(_))).count();
    plan.branches.iter().map(|id| plan.size[*id] as usize).sum::<usize>() + leaves
}

/// Lays `dag` out as instructions: branches in topological order, then the
/// returns. `None` if a jump does not fit its 8-bit offset (the program is
/// then longer than the machine runs anyway).
pub fn emit(dag: &Dag) -> Option<Vec<FilterInsn>> {
    let dag = rebuild(dag, false);
    if let Node::Leaf(v) = dag.nodes[dag.entry as usize] {
        return Some(vec![ret(v)]);
    }
    let Plan { branches, size, x_in } = plan(&dag);
    let mut addr = vec![0u32; dag.nodes.len()];
    let mut at = 0u32;
    for &id in &branches {
        addr[id] = at;
        at += size[id];
    }
    for (id, node) in dag.nodes.iter().enumerate() {
        if let Node::Leaf(_) = node {
            addr[id] = at;
            at += 1;
        }
    }
    let mut out = Vec::with_capacity(at as usize);
    for &id in &branches {
        let Node::Branch { test, jt, jf } = &dag.nodes[id] else { continue };
        let mut last = match &test.src {
            Src::Abs { off, size, mask } => test_insn(op::TEST_ABS, *off, *size, *mask, test),
            Src::Msh { hdr, off, size, mask } => {
                if x_in[id] != XState::Msh(*hdr) {
                    out.push(FilterInsn { op: op::LDX_MSH, arg: 1, k: *hdr, ..Default::default() });
                }
                test_insn(op::TEST_IND, *off, *size, *mask, test)
            }
            Src::Field { k, mask } => test_insn(op::TEST_FIELD, *k, 4, *mask, test),
            Src::Acc(pre) => {
                out.extend_from_slice(pre);
                FilterInsn { op: op::JMP_K, arg: test.cmp, k: test.val, ..Default::default() }
            }
            Src::AccX(pre) => {
                out.extend_from_slice(pre);
                FilterInsn { op: op::JMP_X, arg: test.cmp, ..Default::default() }
            }
            Src::Folded { value, .. } => {
                out.push(FilterInsn { op: op::LD_IMM, k: *value, ..Default::default() });
                FilterInsn { op: op::JMP_K, arg: test.cmp, k: test.val, ..Default::default() }
            }
        };
        let from = out.len() as u32 + 1;
        last.jt = u8::try_from(addr[*jt as usize].checked_sub(from)?).ok()?;
        last.jf = u8::try_from(addr[*jf as usize].checked_sub(from)?).ok()?;
        out.push(last);
    }
    for node in &dag.nodes {
        if let Node::Leaf(v) = node {
            out.push(ret(*v));
        }
    }
    Some(out)
}

fn ret(accept: bool) -> FilterInsn {
    FilterInsn { op: op::RET_K, k: u32::from(accept), ..Default::default() }
}

fn test_insn(opcode: u8, k: u32, size: u8, mask: u32, test: &Test) -> FilterInsn {
    FilterInsn { op: opcode, arg: test_arg(size, test.cmp), k, mask, val: test.val, ..Default::default() }
}
