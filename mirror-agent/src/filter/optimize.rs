//! The compiler's intermediate form, a DAG of fused tests, its optimizer
//! and its layout into filter-machine instructions.
//!
//! A node is one test (a load, a mask and a comparison, or straight-line
//! arithmetic then a comparison) and two successors. tcpdump's verdicts are
//! those of the program libpcap's optimizer leaves, and a load past the end
//! of the frame rejects the whole packet, so which loads run is part of the
//! semantics: the optimizer here does what libpcap's does to the same
//! tests, in the same order of passes (see [`optimize`]):
//!
//! - jump threading: an edge into a test that tests before it on every
//!   path decide (the same value; the same comparison and constant, or an
//!   equality that held) goes straight on; the load it skips already ran;
//! - a test whose two edges meet is dropped, and its load with it;
//! - "pull-ups": in a chain of `or`ed (`and`ed) tests sharing a target, a
//!   later test of the value the chain's predecessor tested moves up,
//!   before tests of other values (so a load after it may no longer run);
//! - constant comparisons are decided when libpcap decides them;
//! - identical nodes are merged last, unreachable ones dropped.
//!
//! Values are told apart as libpcap's value numbering does: a primitive's
//! `ldh [12]` and a relation's `ether[12:2]` (an indexed load until the
//! second pass) are different values, two relations' `ether[12:2]` the same.
use std::collections::HashMap;

use mirror_common::{
    FilterInsn,
    filter::{cmp, op, test_arg},
    vm::compare,
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
    /// A relation's load at a constant index, `P[base + index:size] &
    /// mask` (after `X = 4 * (P[hdr] & 0xf)` with `hdr`). libpcap computes
    /// it as an indexed load, a value of its own, never a primitive's (its
    /// second pass folds the index, once jumps no longer move).
    Rel { hdr: Option<u32>, base: u32, index: u32, size: u8, mask: u32 },
    /// `A` after straight-line code (loads, arithmetic, scratch memory; no
    /// jumps), compared with the test's constant.
    Acc(Vec<FilterInsn>),
    /// `A` compared with `X`, both set by the code.
    AccX(Vec<FilterInsn>),
    /// Constants compared: libpcap decides the test in the `round`-th
    /// iteration of its first pass (1 for `jgt`, `jge`, `jset`, 2 for
    /// `jeq`, whose `sub x` must fold first).
    Const { value: u32, round: u8 },
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
    /// An equality of a relation: libpcap's code subtracts, then compares
    /// with 0, and only its second iteration sees the value compared (the
    /// subtraction folded into the constant), so the first one compares
    /// it with nothing.
    pub late: bool,
}

pub type NodeId = u32;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Node {
    /// Accept (`true`) or reject.
    Leaf(bool),
    Branch {
        test: Test,
        jt: NodeId,
        jf: NodeId,
    },
}

/// A rooted DAG. Built bottom-up, so successors have smaller ids than
/// their predecessors until a pull-up moves a node; [`rebuild`] restores
/// that order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dag {
    pub nodes: Vec<Node>,
    pub entry: NodeId,
}

/// Builds a [`Dag`] bottom-up. Like libpcap's code generator, it makes a
/// node per test even where an identical one exists: libpcap merges
/// identical blocks only once its jumps are optimized, and which tests its
/// optimizer drops depends on that (see [`optimize`]).
#[derive(Debug, Default)]
pub struct Builder {
    nodes: Vec<Node>,
    /// Merge identical nodes.
    intern: bool,
    interned: HashMap<Node, NodeId>,
}

impl Builder {
    pub fn node(&mut self, node: Node) -> NodeId {
        if self.intern
            && let Some(id) = self.interned.get(&node)
        {
            return *id;
        }
        let id = self.nodes.len() as NodeId;
        if self.intern {
            self.interned.insert(node.clone(), id);
        }
        self.nodes.push(node);
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

/// The reachable part of `dag` in post-order (successors first; the entry
/// is last). With `bypass`, tests whose two successors are the same node
/// are dropped, as libpcap's jump optimization does (and their loads with
/// them), except the entry, which has no edge to move; with `intern`,
/// identical nodes are merged (libpcap's `intern_blocks`).
pub fn rebuild(dag: &Dag, bypass: bool, intern: bool) -> Dag {
    let n = dag.nodes.len();
    let mut new_id: Vec<Option<NodeId>> = vec![None; n];
    let mut out = Builder { intern, ..Builder::default() };
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
                        new_id[id as usize] = Some(if t == f && bypass && id != dag.entry {
                            t
                        } else {
                            out.branch(test.clone(), t, f)
                        });
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

/// Value ids, libpcap's value numbers: equal sources, equal ids, but for
/// [`Test::late`] tests before `round` 2, which compare a value of their
/// own.
fn value_ids(dag: &Dag, round: u8) -> Vec<u32> {
    let mut ids: HashMap<&Src, u32> = HashMap::new();
    let mut next = 0u32;
    dag.nodes
        .iter()
        .map(|n| match n {
            Node::Leaf(_) => u32::MAX,
            Node::Branch { test, .. } => {
                next += 1;
                if test.late && round < 2 {
                    return u32::MAX - next;
                }
                let fresh = ids.len() as u32;
                *ids.entry(&test.src).or_insert(fresh)
            }
        })
        .collect()
}

/// Jump threading, as libpcap's `opt_j` moves edges: what the edges say
/// is computed on the graph as it is, then the edges are moved lowest
/// nodes first (nearest the returns), so a test that an edge above will
/// skip still tells the edges below what it found. An edge into a test
/// whose two successors are the same node skips it. `dag` must be in
/// post-order (as [`rebuild`] leaves it).
fn thread(dag: &mut Dag, round: u8) {
    let src = value_ids(dag, round);
    let n = dag.nodes.len();
    // What holds on entry to each node: the meet over its edges in.
    let mut facts: Vec<Option<Facts>> = vec![None; n];
    facts[dag.entry as usize] = Some(Facts::new());
    let edge_facts = |facts: &[Option<Facts>], id: usize, test: &Test, outcome: bool| {
        let mut edge = facts[id].clone().unwrap_or_default();
        let origin = 2 * id as u32 + u32::from(!outcome);
        facts_add(&mut edge, Fact { src: src[id], origin, cmp: test.cmp, val: test.val, outcome });
        edge
    };
    for id in (0..n).rev() {
        let Node::Branch { test, jt, jf } = &dag.nodes[id] else { continue };
        if facts[id].is_none() {
            continue;
        }
        for (target, outcome) in [(*jt, true), (*jf, false)] {
            let edge = edge_facts(&facts, id, test, outcome);
            let slot = &mut facts[target as usize];
            *slot = Some(match slot.take() {
                None => edge,
                Some(old) => facts_join(&old, &edge),
            });
        }
    }
    let mut level = vec![0u32; n];
    for id in 0..n {
        if let Some((t, f)) = succ(&dag.nodes[id]) {
            level[id] = 1 + level[t as usize].max(level[f as usize]);
        }
    }
    let mut order: Vec<usize> = (0..n).filter(|id| level[*id] > 0 && facts[*id].is_some()).collect();
    order.sort_by_key(|id| (level[*id], *id));
    for id in order {
        let Node::Branch { test, jt, jf } = dag.nodes[id].clone() else { continue };
        let mut targets = [jt, jf];
        for (target, outcome) in targets.iter_mut().zip([true, false]) {
            let edge = edge_facts(&facts, id, &test, outcome);
            while let Node::Branch { test: next, jt, jf } = &dag.nodes[*target as usize] {
                if jt == jf {
                    *target = *jt;
                    continue;
                }
                match facts_eval(&edge, src[*target as usize], next) {
                    Some(o) => *target = if o { *jt } else { *jf },
                    None => break,
                }
            }
        }
        dag.nodes[id] = Node::Branch { test, jt: targets[0], jf: targets[1] };
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
fn pullup(dag: &mut Dag, preds: &mut [Vec<(NodeId, bool)>], vals: &[u32], b: NodeId, chain: bool) -> bool {
    let in_edges = &preds[b as usize];
    let Some(&(first, _)) = in_edges.first() else { return false };
    let value = vals[first as usize];
    if in_edges.iter().any(|(p, _)| vals[*p as usize] != value) {
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
        if vals[diff as usize] != value {
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
        if vals[pull as usize] == value {
            break;
        }
        parent = pull;
        pull = edge(dag, pull, chain);
    }
    let after = edge(dag, pull, chain);
    let into_b = preds[b as usize].clone();
    move_edge(dag, preds, parent, chain, after);
    move_edge(dag, preds, pull, chain, diff);
    match above {
        Some(a) => move_edge(dag, preds, a, chain, pull),
        None => {
            for (p, side) in into_b {
                move_edge(dag, preds, p, side, pull);
            }
        }
    }
    true
}

/// Points an edge elsewhere, keeping `preds` up to date.
fn move_edge(dag: &mut Dag, preds: &mut [Vec<(NodeId, bool)>], from: NodeId, side: bool, to: NodeId) {
    let old = edge(dag, from, side);
    preds[old as usize].retain(|e| *e != (from, side));
    preds[to as usize].push((from, side));
    set_edge(dag, from, side, to);
}

fn preds_of(dag: &Dag) -> Vec<Vec<(NodeId, bool)>> {
    let mut preds: Vec<Vec<(NodeId, bool)>> = vec![Vec::new(); dag.nodes.len()];
    for (id, node) in dag.nodes.iter().enumerate() {
        if let Some((t, f)) = succ(node) {
            preds[t as usize].push((id as NodeId, true));
            preds[f as usize].push((id as NodeId, false));
        }
    }
    preds
}

/// A sweep of pull-ups, lowest nodes first (as libpcap walks its levels).
/// `dag` must be in post-order; it may not be afterwards.
fn pullups(dag: &mut Dag, round: u8) {
    let n = dag.nodes.len();
    let vals = value_ids(dag, round);
    let mut level = vec![0u32; n];
    for id in 0..n {
        if let Some((t, f)) = succ(&dag.nodes[id]) {
            level[id] = 1 + level[t as usize].max(level[f as usize]);
        }
    }
    let mut order: Vec<usize> = (0..n).filter(|id| level[*id] > 0).collect();
    order.sort_by_key(|id| (level[*id], *id));
    let mut preds = preds_of(dag);
    for id in order {
        for chain in [false, true] {
            pullup(dag, &mut preds, &vals, id as NodeId, chain);
        }
    }
}

/// libpcap's first pass decides a comparison of constants as it folds
/// the block's code: [`Src::Const`] tests of this round jump to one place.
fn decide_consts(dag: &mut Dag, round: u8) {
    for node in &mut dag.nodes {
        if let Node::Branch { test: Test { src: Src::Const { value, round: r }, cmp: how, val, .. }, jt, jf } =
            node
            && *r <= round
        {
            let to = if compare(*how, *value, *val) { *jt } else { *jf };
            (*jt, *jf) = (to, to);
        }
    }
}

/// Iterations of libpcap's first pass (threading, pull-ups); each is
/// linear-ish and the graphs are small, the cap only guards against
/// ping-pong (libpcap gives up after 100 of only jump moves).
const MAX_ROUNDS: u8 = 100;

/// Optimizes `dag` as libpcap's optimizer does, in its two passes. First
/// the jumps, in iterations of: deciding constant comparisons
/// ([`Src::Const`]), threading, pull-ups, dropping tests whose two edges
/// meet (but for the entry, which no edge enters). Then the statements:
/// [`Src::Folded`] tests are decided, and the tests before them keep both
/// edges and their loads (the second pass moves no jumps). Last, identical
/// nodes are merged (`intern_blocks`) and entries that jump to one place
/// skipped (`opt_root`: the first one's loads still run unless the place
/// reached returns).
pub fn optimize(dag: &Dag) -> Dag {
    let mut dag = rebuild(dag, true, false);
    for round in 1..=MAX_ROUNDS {
        let before = dag.clone();
        decide_consts(&mut dag, round);
        thread(&mut dag, round);
        dag = rebuild(&dag, true, false);
        pullups(&mut dag, round);
        dag = rebuild(&dag, true, false);
        if dag == before && round >= 2 {
            break;
        }
    }
    // The second pass decides folded arithmetic: its test jumps to one
    // place, and the tests before it keep their two edges.
    for node in &mut dag.nodes {
        if let Node::Branch { test: Test { src: Src::Folded { value, .. }, cmp: how, val, .. }, jt, jf } =
            node
        {
            let to = if compare(*how, *value, *val) { *jt } else { *jf };
            (*jt, *jf) = (to, to);
        }
    }
    let mut dag = rebuild(&dag, false, true);
    // libpcap's `opt_root` skips entries that jump to one place; the
    // first one's loads still run (the skipped ones' do not), unless the
    // place reached returns.
    let mut to = dag.entry;
    while let Node::Branch { jt, jf, .. } = &dag.nodes[to as usize]
        && jt == jf
    {
        to = *jt;
    }
    let returns = matches!(dag.nodes[to as usize], Node::Leaf(_));
    if let Node::Branch { test, jt, jf } = &mut dag.nodes[dag.entry as usize]
        && to != dag.entry
    {
        if returns || load_free(&test.src) {
            dag.entry = to;
        } else {
            (*jt, *jf) = (to, to);
        }
    }
    // A load-free test that jumps to one place need not run at all.
    let skip = |dag: &Dag, mut id: NodeId| {
        while let Node::Branch { test, jt, jf } = &dag.nodes[id as usize] {
            if jt != jf || !load_free(&test.src) {
                break;
            }
            id = *jt;
        }
        id
    };
    for id in 0..dag.nodes.len() {
        if let Node::Branch { jt, jf, .. } = dag.nodes[id] {
            let (t, f) = (skip(&dag, jt), skip(&dag, jf));
            if let Node::Branch { jt, jf, .. } = &mut dag.nodes[id] {
                (*jt, *jf) = (t, f);
            }
        }
    }
    rebuild(&dag, false, true)
}

fn load_free(src: &Src) -> bool {
    matches!(src, Src::Const { .. } | Src::Folded { .. })
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
            Src::Msh { hdr, .. } | Src::Rel { hdr: Some(hdr), .. } => {
                (if x == XState::Msh(*hdr) { 1 } else { 2 }, XState::Msh(*hdr))
            }
            Src::Acc(code) | Src::AccX(code) => (code.len() as u32 + 1, x_after(code, x)),
            Src::Const { .. } | Src::Folded { .. } => (2, x),
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
    let dag = rebuild(dag, false, true);
    let plan = plan(&dag);
    let leaves = dag.nodes.iter().filter(|n| matches!(n, Node::Leaf(_))).count();
    plan.branches.iter().map(|id| plan.size[*id] as usize).sum::<usize>() + leaves
}

/// Lays `dag` out as instructions: branches in topological order, then the
/// returns. `None` if a jump does not fit its 8-bit offset (the program is
/// then longer than the machine runs anyway).
pub fn emit(dag: &Dag) -> Option<Vec<FilterInsn>> {
    let dag = rebuild(dag, false, true);
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
            Src::Rel { hdr: None, base, index, size, mask } => {
                test_insn(op::TEST_ABS, base.wrapping_add(*index), *size, *mask, test)
            }
            Src::Rel { hdr: Some(hdr), base, index, size, mask } => {
                if x_in[id] != XState::Msh(*hdr) {
                    out.push(FilterInsn { op: op::LDX_MSH, arg: 1, k: *hdr, ..Default::default() });
                }
                test_insn(op::TEST_IND, base.wrapping_add(*index), *size, *mask, test)
            }
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
            Src::Const { value, .. } | Src::Folded { value, .. } => {
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
